process SCVARPART_FIT {
    tag "${meta.id} ${chunk}/${n_chunks}"
    label 'process_medium'

    conda "${moduleDir}/environment.yml"

    input:
    tuple val(meta), path(h5ad), val(chunk), val(n_chunks)
    path plan
    // known covariances (kinship files): the terms, the files' names, and the files, staged
    // as covariance1/NAME, covariance2/NAME, ... in the order of the terms (empty lists: none)
    tuple val(covariance_terms), val(covariance_names), path(covariance_files, stageAs: 'covariance?/*')
    // model options beside the plan: [weights: obs column or null, store_blups: true/false,
    // test: 'lrt' or null, n_boot: replicates (0: none), seed and ci: numbers or null]
    val model

    output:
    tuple val(meta), path("*.chunk*.h5ad"), emit: chunk
    path "versions.yml"                   , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    def weights = model.weights ? "--weights '${model.weights}'" : ''
    def store_blups = model.store_blups ? '--store-blups' : ''
    def test = model.test ? "--test ${model.test}" : ''
    def n_boot = model.n_boot ? "--n-boot ${model.n_boot}" : ''
    def seed = model.seed != null ? "--seed ${model.seed}" : ''
    def ci = model.ci != null ? "--ci ${model.ci}" : ''
    def covariance = [covariance_terms, covariance_names].transpose().withIndex().collect { pair, i ->
        "--covariance '${pair[0]}=covariance${i + 1}/${pair[1]}'"
    }.join(' ')
    """
    scvarpart fit ${h5ad} --plan ${plan} ${weights} ${covariance} ${store_blups} ${test} ${n_boot} ${seed} ${ci} --genes ${chunk}/${n_chunks} --n-jobs ${task.cpus} --quiet ${args} -o ${prefix}.chunk${chunk}of${n_chunks}.h5ad

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
