process SCVARPART_GROUPS {
    tag "${meta.id}"
    label 'process_single'

    conda "${moduleDir}/environment.yml"

    input:
    tuple val(meta), path(h5ad)
    val groupby

    output:
    tuple val(meta), path("groups.txt"), emit: groups
    path "versions.yml"                , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    scvarpart groups ${h5ad} --groupby '${groupby}' ${args} > groups.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """

    stub:
    """
    touch groups.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """
}
