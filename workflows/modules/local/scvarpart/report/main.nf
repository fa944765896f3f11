process SCVARPART_REPORT {
    tag "${meta.id}"
    label 'process_single'

    conda "${moduleDir}/environment.yml"

    input:
    tuple val(meta), path(h5ad)

    output:
    tuple val(meta), path("*.varpart.tsv")       , emit: tsv
    tuple val(meta), path("*.varpart_report.txt"), emit: report
    tuple val(meta), path("*.varpart_report.html"), emit: html
    tuple val(meta), path("*_mqc.yaml")           , emit: multiqc
    path "versions.yml"                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    scvarpart report ${h5ad} --tsv ${prefix}.varpart.tsv --html ${prefix}.varpart_report.html --multiqc ${prefix}.scvarpart_mqc.yaml ${args} > ${prefix}.varpart_report.txt

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.varpart.tsv ${prefix}.varpart_report.txt ${prefix}.varpart_report.html ${prefix}.scvarpart_mqc.yaml

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """
}
