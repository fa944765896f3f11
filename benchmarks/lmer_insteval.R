#!/usr/bin/env Rscript
# Fit one lme4 model to lme4's InstEval (as shipped in tests/data) and print the
# seconds lmer took and its objective, for benchmarks/insteval.py.
# Usage: Rscript lmer_insteval.R INSTEVAL.csv.gz "FORMULA" REML(TRUE|FALSE)
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(gzfile(args[1]))
for (col in c("s", "d", "dept", "service")) d[[col]] <- factor(d[[col]])
reml <- as.logical(args[3])
t0 <- proc.time()[["elapsed"]]
fit <- lmer(as.formula(args[2]), d, REML = reml)
secs <- proc.time()[["elapsed"]] - t0
cat(sprintf("%.6f %.10f\n", secs, -2 * as.numeric(logLik(fit))))
