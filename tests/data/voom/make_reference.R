# References for precision weights: voom's trend with a mixed model (the steps of
# variancePartition's voomWithDreamWeights, with lme4 and stats::lowess) and lme4's fits
# with gene-specific weights (lmer(weights = w_g), one gene at a time). Run from this folder:
#
#   cd tests/data/voom && setarch -R Rscript make_reference.R     # ~1 minute
#
# Writes counts.csv, obs.csv (simulated pseudobulk samples) and reference.json. Made with
# R 4.2.2, lme4 1.1-31 and jsonlite 1.8.4 (Debian bookworm); the versions are in the JSON.
# variancePartition is not packaged in Debian: its function's steps are written out below
# (voomWithDreamWeights in variancePartition 1.28: lib.size = colSums, log CPM with 0.5
# and lib.size + 1, fitVarPartModel (lmer, REML = FALSE) with the sample weights, sigma()
# and predict(), lowess(f = span), approxfun(rule = 2), 1 / f(fitted log count)^4, times
# the sample weights). Every lmer fit here is the better of two tight-tolerance searches
# (nloptwrap and bobyqa to 1e-12), so that the numbers do not depend on where lme4's
# default stopping rule happens to stop.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

set.seed(20261127)
n_donor <- 16
n_batch <- 4
n_genes <- 40
# 48 samples: every donor in 3 of the 4 batches
obs <- do.call(rbind, lapply(seq_len(n_donor), function(d) {
  data.frame(donor = sprintf("d%02d", d), batch = sprintf("b%d", sample(n_batch, 3)))
}))
obs$sample <- sprintf("s%02d", seq_len(nrow(obs)))
obs$n_cells <- as.integer(round(exp(runif(nrow(obs), log(5), log(400)))))
obs$w <- obs$n_cells / mean(obs$n_cells)
obs <- obs[, c("sample", "donor", "batch", "n_cells", "w")]
n <- nrow(obs)
donor_i <- match(obs$donor, sprintf("d%02d", seq_len(n_donor)))
batch_i <- match(obs$batch, sprintf("b%d", seq_len(n_batch)))
mean_log <- rnorm(n_genes, -7, 1.5)
sd_donor <- runif(n_genes, 0, 0.6)
sd_batch <- runif(n_genes, 0, 0.4)
sd_donor[1:4] <- 0
sd_batch[5:8] <- 0
cells_lib <- 1500 * obs$n_cells  # counts per sample grow with its cells
counts <- sapply(seq_len(n_genes), function(g) {
  eta <- mean_log[g] + rnorm(n_donor, 0, sd_donor[g])[donor_i] +
    rnorm(n_batch, 0, sd_batch[g])[batch_i] + rnorm(n, 0, 0.1)
  rnbinom(n, mu = cells_lib * exp(eta), size = 20)
})
colnames(counts) <- sprintf("g%02d", seq_len(n_genes))
rownames(counts) <- obs$sample
write.csv(obs, "obs.csv", row.names = FALSE)
write.csv(data.frame(sample = obs$sample, counts, check.names = FALSE), "counts.csv",
          row.names = FALSE)

obs <- read.csv("obs.csv", stringsAsFactors = TRUE)
counts <- as.matrix(read.csv("counts.csv", row.names = 1, check.names = FALSE))

tight <- function(formula, data, reml, weights) {
  data$.w <- weights
  a <- lmer(formula, data, REML = reml, weights = .w,
            control = lmerControl(optimizer = "nloptwrap", calc.derivs = FALSE,
                                  optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-12,
                                                 xtol_rel = 0, ftol_rel = 0)))
  b <- lmer(formula, data, REML = reml, weights = .w,
            control = lmerControl(optimizer = "bobyqa", calc.derivs = FALSE,
                                  optCtrl = list(rhoend = 1e-12)))
  crit <- function(f) if (reml) f@devcomp$cmp[["REML"]] else f@devcomp$cmp[["dev"]]
  if (crit(a) <= crit(b)) a else b
}
objective <- function(f) if (isREML(f)) f@devcomp$cmp[["REML"]] else f@devcomp$cmp[["dev"]]
num <- function(x) unname(as.numeric(x))

form <- E ~ (1 | donor) + (1 | batch)
lib <- colSums(t(counts))
E_all <- log2((counts + 0.5) / (lib + 1) * 1e6)  # samples x genes (lib recycled down rows)

voom_dream <- function(sample_w, span = 0.5) {
  sig <- numeric(n_genes)
  fitted <- matrix(0, n, n_genes)
  for (g in seq_len(n_genes)) {
    d <- obs
    d$E <- E_all[, g]
    f <- suppressMessages(tight(form, d, FALSE, sample_w))
    sig[g] <- sigma(f)
    fitted[, g] <- predict(f)
  }
  sx <- colMeans(E_all) + mean(log2(lib + 1)) - log2(1e6)
  sy <- sqrt(sig)
  l <- lowess(sx, sy, f = span)
  f <- approxfun(l, rule = 2)
  logcount <- fitted + log2(lib + 1) - log2(1e6)
  w <- 1 / f(logcount)^4
  dim(w) <- dim(logcount)
  list(sigma = sig, sx = sx, sy = sy, lowess_x = l$x, lowess_y = l$y,
       weights = w * sample_w)
}

unweighted <- voom_dream(rep(1, n))
by_cells <- voom_dream(obs$w)

# lmer with gene-specific weights: each gene with its own column of voom weights
gene_fits <- list()
for (reml in c(TRUE, FALSE)) for (g in seq_len(n_genes)) {
  d <- obs
  d$E <- E_all[, g]
  f <- suppressMessages(tight(form, d, reml, by_cells$weights[, g]))
  vc <- as.data.frame(VarCorr(f))
  gene_fits[[length(gene_fits) + 1]] <- list(
    gene = colnames(counts)[g], REML = reml, objective = objective(f),
    theta = num(getME(f, "theta")), theta_names = names(getME(f, "theta")),
    sigma = sigma(f), fixef = num(fixef(f)),
    vcov = setNames(as.list(vc$vcov), vc$grp), isSingular = isSingular(f)
  )
}

out <- list(
  description = paste("voom precision weights with a mixed model (voomWithDreamWeights's",
                      "steps), and lmer fits with gene-specific weights"),
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  jsonlite = as.character(packageVersion("jsonlite"))),
  formula = "E ~ (1 | donor) + (1 | batch)",
  span = 0.5,
  lib_size = num(lib),
  log_cpm = unname(E_all),
  voom = list(unweighted = unweighted, sample_weights_w = by_cells),
  gene_weight_fits = gene_fits
)
write_json(out, "reference.json", digits = NA, auto_unbox = TRUE, matrix = "rowmajor")
cat("wrote reference.json:", n, "samples x", n_genes, "genes;",
    sum(sapply(gene_fits, `[[`, "isSingular")), "singular gene-weight fits of",
    length(gene_fits), "\n")
