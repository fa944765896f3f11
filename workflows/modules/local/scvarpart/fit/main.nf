process SCVARPART_FIT {
    tag "${meta.id} ${group ? group + ' ' : ''}${chunk}/${n_chunks}"
    label 'process_medium'

    conda "${moduleDir}/environment.yml"

    input:
    // group: with model.groupby, the group (one of 'scvarpart groups'), else ''
    tuple val(meta), path(h5ad), val(group), val(chunk), val(n_chunks)
    path plan
    // known covariances (kinship files): the terms, the files' names, and the files, staged
    // as covariance1/NAME, covariance2/NAME, ... in the order of the terms (empty lists: none)
    tuple val(covariance_terms), val(covariance_names), path(covariance_files, stageAs: 'covariance?/*')
    // model options beside the plan: [weights: obs column or layer, or null, store_blups:
    // true/false, test: 'lrt' or null, n_boot: replicates (0: none), seed and ci: numbers or
    // null, groupby: obs column of the groups fitted separately, or null]
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
    // one group's chunk of genes; the file named by the group, made safe (and told apart
    // from another group's that looks the same once made safe)
    def grouping = group ? "--groupby '${model.groupby}' --group '${group}'" : ''
    def part = group ? group.toString().replaceAll(/[^A-Za-z0-9_.-]/, '_') + '-' + group.toString().md5().take(8) + '.' : ''
    """
    scvarpart fit ${h5ad} --plan ${plan} ${weights} ${covariance} ${store_blups} ${test} ${n_boot} ${seed} ${ci} ${grouping} --genes ${chunk}/${n_chunks} --n-jobs ${task.cpus} --quiet ${args} -o ${prefix}.${part}chunk${chunk}of${n_chunks}.h5ad

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """

    stub:
    def prefix = task.ext.prefix ?: "${meta.id}"
    def part = group ? group.toString().replaceAll(/[^A-Za-z0-9_.-]/, '_') + '-' + group.toString().md5().take(8) + '.' : ''
    """
    touch ${prefix}.${part}chunk${chunk}of${n_chunks}.h5ad

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        scvarpart: \$(scvarpart --version | sed 's/scvarpart //')
    END_VERSIONS
    """
}
