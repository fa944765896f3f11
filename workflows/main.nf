#!/usr/bin/env nextflow
/*
 * scvarpart: per-gene variance partition of an AnnData file, scattered over chunks of genes
 * (and, with --groupby, over the groups of an obs column, e.g. cell types).
 *
 *   [GROUPS ->] FIT (one task per group and chunk of genes, in parallel) -> MERGE -> REPORT
 *
 * Every process runs the scvarpart command line; see workflows/README.md.
 */
nextflow.enable.dsl = 2

include { SCVARPART_SIMULATE } from './modules/local/scvarpart/simulate/main'
include { SCVARPART_GROUPS   } from './modules/local/scvarpart/groups/main'
include { SCVARPART_FIT      } from './modules/local/scvarpart/fit/main'
include { SCVARPART_MERGE    } from './modules/local/scvarpart/merge/main'
include { SCVARPART_REPORT   } from './modules/local/scvarpart/report/main'

/*
 * --covariance as term -> file: 'donor=kinship.csv,line=lines.tsv' on the command line,
 * or a map in a config or params file (params.covariance = [donor: 'kinship.csv']).
 */
def covarianceFiles(value) {
    if (!value) {
        return [:]
    }
    if (value instanceof Map) {
        return value.collectEntries { term, path -> [ (term.toString()): path.toString() ] }
    }
    def out = [:]
    value.toString().tokenize(',').each { entry ->
        def parts = entry.split('=', 2)
        if (parts.size() != 2 || !parts[0].trim() || !parts[1].trim()) {
            error "--covariance expects TERM=FILE[,TERM=FILE...], e.g. donor=kinship.csv; got '${entry}'"
        }
        out[parts[0].trim()] = parts[1].trim()
    }
    return out
}

workflow {
    if (!params.plan) {
        error "Give the analysis plan: --plan plan.toml (see workflows/README.md)"
    }
    if (params.chunks < 1) {
        error "--chunks must be at least 1"
    }
    if (params.test && params.test.toString() != 'lrt') {
        error "--test must be lrt (the likelihood-ratio test of each random term's variance), got '${params.test}'"
    }
    // numbers only on the FIT tasks' command lines (scvarpart checks their ranges)
    if (!(params.n_boot.toString() ==~ /\d+/)) {
        error "--n_boot must be a non-negative integer (bootstrap replicates per gene; 0: none), got '${params.n_boot}'"
    }
    if (params.seed != null && !(params.seed.toString() ==~ /\d+/)) {
        error "--seed must be a non-negative integer (the bootstrap's seed), got '${params.seed}'"
    }
    if (params.ci != null && !(params.ci.toString() ==~ /none|(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?/)) {
        error "--ci must be a level between 0 and 1 (of the intervals), e.g. 0.95, or none; got '${params.ci}'"
    }
    ch_plan = Channel.value(file(params.plan, checkIfExists: true))
    ch_versions = Channel.empty()

    // kinship files are process inputs, staged into every FIT task (also where the work
    // directory is on another file system than the launch directory)
    def covariance = covarianceFiles(params.covariance)
    def covariance_files = covariance.values().collect { file(it, checkIfExists: true) }
    ch_covariance = Channel.value([ covariance.keySet() as List, covariance_files*.name, covariance_files ])
    ch_model = Channel.value([
        weights    : params.weights ?: null,
        store_blups: params.store_blups.toString() == 'true',
        test       : params.test ? params.test.toString() : null,
        n_boot     : params.n_boot.toString() as Long,
        seed       : params.seed != null ? params.seed.toString() : null,
        ci         : params.ci != null ? params.ci.toString() : null,
        groupby    : params.groupby ? params.groupby.toString() : null
    ])

    if (params.input) {
        def input = file(params.input, checkIfExists: true)
        ch_input = Channel.value([ [id: input.baseName], input ])
    } else if (params.example) {
        SCVARPART_SIMULATE([id: 'example'])
        ch_input = SCVARPART_SIMULATE.out.h5ad
        ch_versions = ch_versions.mix(SCVARPART_SIMULATE.out.versions)
    } else {
        error "Give the input: --input cells.h5ad (or -profile test for the example)"
    }

    // the groups fitted separately (--groupby), each a line of 'scvarpart groups'; '' for none
    if (params.groupby) {
        SCVARPART_GROUPS(ch_input, params.groupby.toString())
        ch_groups = SCVARPART_GROUPS.out.groups
            .splitText(elem: 1)
            .map { meta, line -> [ meta, line.trim() ] }
            .filter { meta, group -> group }
        ch_versions = ch_versions.mix(SCVARPART_GROUPS.out.versions)
    } else {
        ch_groups = ch_input.map { meta, h5ad -> [ meta, '' ] }
    }

    // scatter: one FIT task per group and chunk of genes
    ch_chunks = ch_input
        .combine(ch_groups, by: 0)
        .combine(Channel.of(1..params.chunks))
        .map { meta, h5ad, group, chunk -> [ meta, h5ad, group, chunk, params.chunks ] }
    SCVARPART_FIT(ch_chunks, ch_plan, ch_covariance, ch_model)
    ch_versions = ch_versions.mix(SCVARPART_FIT.out.versions.first())

    // gather: the chunks of each input (of every group: their number is known once the
    // groups are), with the input itself
    ch_gathered = params.groupby
        ? SCVARPART_FIT.out.chunk.groupTuple()
        : SCVARPART_FIT.out.chunk.groupTuple(size: params.chunks)
    ch_merge = ch_gathered.join(ch_input)
    SCVARPART_MERGE(ch_merge)
    SCVARPART_REPORT(SCVARPART_MERGE.out.h5ad)
    ch_versions = ch_versions
        .mix(SCVARPART_MERGE.out.versions)
        .mix(SCVARPART_REPORT.out.versions)

    ch_versions
        .unique()
        .collectFile(name: 'versions.yml', storeDir: "${params.outdir}/pipeline_info")
}
