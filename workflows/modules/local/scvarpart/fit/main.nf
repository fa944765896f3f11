process SCVARPART_FIT {
    tag "${meta.id} ${chunk}/${n_chunks}"
    label 'process_medium'

    conda "${moduleDir}/environment.yml"

    input:
    tuple val(meta), path(h5ad), val(chunk), val(n_chunks)
    path plan

    output:
    tuple val(meta), path("*.chunk*.h5ad"), emit: chunk
    path "versions.yml"                   , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    scvarpart fit ${h5ad} --plan ${plan} --genes ${chunk}/${n_chunks} --n-jobs ${task.cpus} --quiet ${args} -o ${prefix}.chunk${chunk}of${n_chunks}.h5ad

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.chunk${chunk}of${n_chunks}.h5ad

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """
}
