#!/usr/bin/env Rscript
# Extract the Debian-packaged datasets into tests/data/realdata/<dataset>/:
#   expr.csv.gz  samples x genes (first column: sample id; header: gene ids),
#                the exact values that lme4 (make_reference.R) and the test fit
#   obs.csv      the sample table (first column: sample id)
# Needs the Debian packages r-bioc-noiseq, r-bioc-bladderbatch,
# r-bioc-hsmmsinglecell (their .rda files are loaded from the installed package
# folders; the packages themselves need not be attached).
# Run from anywhere: Rscript tests/data/realdata/extract_debian.R

get_script_dir <- function() {
  a <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", a[grep("^--file=", a)])
  if (length(f)) dirname(normalizePath(f[1])) else getwd()
}
here <- get_script_dir()
suppressPackageStartupMessages(library(Biobase))

load_rdata <- function(pkg, file) {
  path <- system.file("data", file, package = pkg)
  if (!nzchar(path)) stop("package ", pkg, " (Debian r-bioc-", tolower(pkg), ") is not installed")
  e <- new.env()
  load(path, envir = e)
  e
}

# values rounded to `digits` decimals, written with up to 15 significant digits,
# so the text is the value both R and Python fit
write_expr <- function(mat, ids, dir, digits = 4) {
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  mat <- round(mat, digits)
  df <- data.frame(sample = ids, mat, check.names = FALSE)
  con <- gzfile(file.path(dir, "expr.csv.gz"), "w", compression = 9)
  utils::write.csv(df, con, row.names = FALSE, quote = FALSE)
  close(con)
}
write_obs <- function(obs, dir) {
  utils::write.csv(data.frame(sample = rownames(obs), obs, check.names = FALSE),
                   file.path(dir, "obs.csv"), row.names = FALSE)
}

# --- (a) Marioni et al. 2008: bulk RNA-seq, kidney vs liver, 10 lanes, 2 runs --------
e <- load_rdata("NOISeq", "Marioni.RData")
counts <- as.matrix(e$mycounts)                       # 5088 genes x 10 samples
libsize <- colSums(counts)
cpm <- t(t(counts) / libsize) * 1e6
keep <- rowSums(cpm >= 1) >= 3                         # expressed: CPM >= 1 in >= 3 samples
logcpm <- log2(cpm[keep, , drop = FALSE] + 1)
s <- colnames(counts)                                  # e.g. "R1L1Kidney"
obs <- data.frame(Tissue = as.character(e$myfactors$Tissue),
                  Run = sub("^(R[0-9]+).*$", "\\1", s),
                  Lane = sub("^R[0-9]+(L[0-9]+).*$", "\\1", s),
                  lib_size = libsize, row.names = s)
dir <- file.path(here, "marioni")
write_expr(t(logcpm), s, dir)
write_obs(obs, dir)
message("marioni: ", ncol(counts), " samples, ", sum(keep), " of ", nrow(counts), " genes")

# --- (b) bladderbatch: Affymetrix hgu133a, RMA log2 values, 57 samples, 5 batches ----
e <- load_rdata("bladderbatch", "bladderdata.rda")
b <- e$bladderEset
X <- exprs(b)                                          # 22283 probes x 57
sel <- seq(1L, nrow(X), by = 11L)                      # every 11th probe set: 2026
pd <- pData(b)
obs <- data.frame(batch = paste0("b", pd$batch), cancer = as.character(pd$cancer),
                  outcome = as.character(pd$outcome), row.names = colnames(X))
dir <- file.path(here, "bladderbatch")
write_expr(t(X[sel, , drop = FALSE]), colnames(X), dir)
write_obs(obs, dir)
message("bladderbatch: ", ncol(X), " samples, ", length(sel), " of ", nrow(X), " probe sets")

# --- (d) HSMMSingleCell: Trapnell et al. 2014, Fluidigm C1 myoblasts, FPKM -----------
e <- load_rdata("HSMMSingleCell", "HSMM_expr_matrix.rda")
load(system.file("data", "HSMM_sample_sheet.rda", package = "HSMMSingleCell"), envir = e)
M <- e$HSMM_expr_matrix                                # 47192 genes x 271 cells
ss <- e$HSMM_sample_sheet
expressed <- which(rowSums(M >= 1) >= 0.2 * ncol(M))   # FPKM >= 1 in >= 20% of cells: 8948
sel <- expressed[seq(1L, length(expressed), by = 16L)] # every 16th of them: 560
obs <- data.frame(Hours = paste0("h", as.character(ss$Hours)), Media = as.character(ss$Media),
                  State = paste0("s", as.character(ss$State)), Well = as.character(ss$Well),
                  log10_fragments = round(log10(ss$Mapped.Fragments), 6),
                  row.names = colnames(M))
dir <- file.path(here, "hsmm")
write_expr(t(log2(M[sel, , drop = FALSE] + 1)), colnames(M), dir)
write_obs(obs, dir)
message("hsmm: ", ncol(M), " cells, ", length(sel), " of ", nrow(M), " genes")
