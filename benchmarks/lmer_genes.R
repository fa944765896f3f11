#!/usr/bin/env Rscript
# Fit one lme4 model per gene and report seconds per gene, for benchmarks/vs_lme4.py.
# Usage: Rscript lmer_genes.R EXPR.csv OBS.csv "FORMULA_RHS" REML(TRUE|FALSE) OUT.csv
# EXPR.csv: cells x genes (first column cell id); OBS.csv: cells x covariates.
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
expr <- read.csv(args[1], row.names = 1, check.names = FALSE)
obs <- read.csv(args[2], row.names = 1)
rhs <- args[3]
reml <- as.logical(args[4])
rows <- list()
for (g in colnames(expr)) {
  obs$y <- expr[[g]]
  t0 <- proc.time()[["elapsed"]]
  fit <- lmer(as.formula(paste("y", rhs)), obs, REML = reml)
  secs <- proc.time()[["elapsed"]] - t0
  vc <- as.data.frame(VarCorr(fit))
  rows[[g]] <- data.frame(gene = g, objective = -2 * as.numeric(logLik(fit)),
                          seconds = secs, t(setNames(vc$vcov, paste0("var_", vc$grp))),
                          check.names = FALSE)
}
write.csv(do.call(rbind, rows), args[5], row.names = FALSE)
