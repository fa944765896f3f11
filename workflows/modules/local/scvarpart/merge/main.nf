process SCVARPART_MERGE {
    tag "${meta.id}"
    label 'process_single'

    conda "${moduleDir}/environment.yml"

    input:
    tuple val(meta), path(chunks), path(h5ad)

    output:
    tuple val(meta), path("*.varpart.h5ad"), emit: h5ad
    path "versions.yml"                    , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    scvarpart merge ${chunks} --into ${h5ad} ${args} -o ${prefix}.varpart.h5ad

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.varpart.h5ad

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """
}
