#!/usr/bin/env nextflow
/*
 * scvarpart: per-gene variance partition of an AnnData file, scattered over chunks of genes.
 *
 *   FIT (one task per chunk of genes, in parallel) -> MERGE -> REPORT
 *
 * Every process runs the scvarpart command line; see workflows/README.md.
 */
nextflow.enable.dsl = 2

include { SCVARPART_SIMULATE } from './modules/local/scvarpart/simulate/main'
include { SCVARPART_FIT      } from './modules/local/scvarpart/fit/main'
include { SCVARPART_MERGE    } from './modules/local/scvarpart/merge/main'
include { SCVARPART_REPORT   } from './modules/local/scvarpart/report/main'

workflow {
    if (!params.plan) {
        error "Give the analysis plan: --plan plan.toml (see workflows/README.md)"
    }
    if (params.chunks < 1) {
        error "--chunks must be at least 1"
    }
    ch_plan = Channel.value(file(params.plan, checkIfExists: true))
    ch_versions = Channel.empty()

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

    // scatter: one FIT task per chunk of genes
    ch_chunks = ch_input
        .combine(Channel.of(1..params.chunks))
        .map { meta, h5ad, chunk -> [ meta, h5ad, chunk, params.chunks ] }
    SCVARPART_FIT(ch_chunks, ch_plan)
    ch_versions = ch_versions.mix(SCVARPART_FIT.out.versions.first())

    // gather: the chunks of each input, with the input itself
    ch_merge = SCVARPART_FIT.out.chunk
        .groupTuple(size: params.chunks)
        .join(ch_input)
    SCVARPART_MERGE(ch_merge)
    SCVARPART_REPORT(SCVARPART_MERGE.out.h5ad)
    ch_versions = ch_versions
        .mix(SCVARPART_MERGE.out.versions)
        .mix(SCVARPART_REPORT.out.versions)

    ch_versions
        .unique()
        .collectFile(name: 'versions.yml', storeDir: "${params.outdir}/pipeline_info")
}
