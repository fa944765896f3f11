# References for count models with a known covariance between a term's levels (a kinship
# matrix; issue 14): lme4's glmer with the term's columns of Z multiplied by a factor of K,
# as lme4qtl's relmatGlmer fits them (Ziyatdinov et al. 2018). Run from this folder:
#
#   cd tests/data/glmm && setarch -R Rscript make_kinship_reference.R     # ~3 minutes
#
# The design and K are those of the Gaussian kinship reference (../lme4_terms: 571 cells,
# 40 donors related through K, 5 batches); the counts are simulated here, negative
# binomial with donor effects of covariance sd_donor^2 K. Writes kinship_counts.csv
# (cells x genes, with the offset) and kinship_reference.json:
#
# - `poisson`: per gene, `y ~ 1 + offset(offset) + (1 | donor) + (1 | batch)` by glmer
#   (Laplace), the donor term's Zt replaced by R Zt (K = R'R), bobyqa to rhoend 1e-10;
# - `nb`: the same model with a negative binomial response by glmmTMB (nbinom2, its
#   Laplace approximation with the observed information, as ours; glmer's uses the
#   expected information for this non-canonical link, another criterion): the donor
#   term as diag(0 + V1 + ... + V40 | one) on the columns of Z R (K = R R'), its 40
#   standard deviations mapped to one parameter (glmmTMB 1.1.5 has no kinship term);
# - `poisson_glmmTMB`: the Poisson fit by that construction, against glmer's;
# - `identity_check`: the construction with K = I against glmer's own fit.
#
# Made with R 4.2.2, lme4 1.1-31, glmmTMB 1.1.5 (Debian bookworm; versions in the JSON).

suppressPackageStartupMessages({
  library(lme4)
  library(glmmTMB)
  library(jsonlite)
})

obs <- read.csv("../lme4_terms/kinship_obs.csv", stringsAsFactors = FALSE)
K <- as.matrix(read.csv("../lme4_terms/kinship_K.csv", row.names = 1, check.names = FALSE))
donor_ids <- rownames(K)
obs$donor <- factor(obs$donor, levels = donor_ids)
obs$batch <- factor(obs$batch)
obs$offset <- round(obs$log_umi - 8, 6)

set.seed(20261128)
truth <- data.frame(
  gene = sprintf("k%d", 1:8),
  intercept = c(1.0, 0.5, 1.5, 0.0, 2.0, 1.0, 0.8, 1.2),
  sd_donor = c(0.6, 1.0, 0.3, 0.8, 0.5, 0.0, 1.2, 0.4),
  sd_batch = c(0.3, 0.0, 0.5, 0.2, 0.4, 0.6, 0.1, 0.0),
  phi = c(1e6, 1e6, 2, 5, 1, 3, 10, 0.5)  # 1e6: Poisson
)
R_true <- chol(K)  # upper, K = R'R
bidx <- as.integer(obs$batch)
didx <- as.integer(obs$donor)
counts <- sapply(seq_len(nrow(truth)), function(j) {
  t <- truth[j, ]
  b <- as.numeric(t(R_true) %*% rnorm(length(donor_ids), 0, t$sd_donor))
  eta <- t$intercept + obs$offset + b[didx] + rnorm(nlevels(obs$batch), 0, t$sd_batch)[bidx]
  rnbinom(nrow(obs), mu = exp(eta), size = t$phi)
})
colnames(counts) <- truth$gene
write.csv(data.frame(cell = obs$cell, offset = obs$offset, counts, check.names = FALSE),
          "kinship_counts.csv", row.names = FALSE)
data <- read.csv("kinship_counts.csv", check.names = FALSE)
stopifnot(identical(data$cell, obs$cell))
obs$offset <- data$offset

# glmer with the term's Zt multiplied by R (K = R'R), as lme4qtl's relmatGlmer
relmat_glmer <- function(formula, data, family, K, term) {
  gf <- glFormula(formula, data = data, family = family)
  rt <- gf$reTrms
  i <- which(names(rt$cnms) == term)
  rows <- (rt$Gp[i] + 1):rt$Gp[i + 1]
  lev <- rownames(rt$Zt)[rows]
  R <- chol(K[lev, lev])
  Zt <- as.matrix(rt$Zt)
  Zt[rows, ] <- R %*% Zt[rows, ]
  rt$Zt <- as(Matrix(Zt, sparse = TRUE), "CsparseMatrix")
  gf$reTrms <- rt
  devfun <- do.call(mkGlmerDevfun, gf)
  ctrl <- list(rhoend = 1e-10, maxfun = 1e5)
  opt <- optimizeGlmer(devfun, optimizer = "bobyqa", control = ctrl, stage = 1)
  devfun <- updateGlmerDevfun(devfun, gf$reTrms)
  opt <- optimizeGlmer(devfun, optimizer = "bobyqa", control = ctrl, stage = 2)
  mkMerMod(environment(devfun), opt, gf$reTrms, fr = gf$fr)
}

# glmmTMB with the donor effects b = R v on the columns of Z R, v's standard deviations
# mapped to one
ZR <- model.matrix(~ 0 + donor, obs) %*% t(chol(K[levels(obs$donor), levels(obs$donor)]))
colnames(ZR) <- paste0("V", seq_len(ncol(ZR)))
relmat_tmb <- function(d, family) {
  d <- cbind(d, ZR)
  d$one <- factor(1)
  f <- as.formula(paste("y ~ 1 + offset(offset) + diag(0 +",
                        paste(colnames(ZR), collapse = " + "), "| one) + (1 | batch)"))
  glmmTMB(f, data = d, family = family,
          map = list(theta = factor(c(rep(1, ncol(ZR)), 2))))
}
tmb_record <- function(fit) {
  vc <- VarCorr(fit)$cond
  out <- list(logLik = as.numeric(logLik(fit)), fixef = unname(fixef(fit)$cond),
              theta = list(donor = sqrt(vc$one[1, 1]), batch = sqrt(vc$batch[1, 1])),
              converged = fit$sdr$pdHess && fit$fit$convergence == 0)
  if (family(fit)$family == "nbinom2") out$phi <- sigma(fit)
  out
}

num <- function(x) unname(as.numeric(x))
record <- function(fit, phi = NULL) {
  ll <- logLik(fit)
  out <- list(logLik = as.numeric(ll), fixef = num(fixef(fit)),
              theta = as.list(setNames(num(getME(fit, "theta")), names(getME(fit, "cnms")))))
  if (!is.null(phi)) out$phi <- phi
  out
}

formula <- y ~ 1 + offset(offset) + (1 | donor) + (1 | batch)
fits <- list()
for (g in truth$gene) {
  d <- obs
  d$y <- data[[g]]
  pois <- relmat_glmer(formula, d, poisson, K, "donor")
  pois_tmb <- relmat_tmb(d, poisson)
  nb <- relmat_tmb(d, nbinom2)
  fits[[g]] <- list(poisson = record(pois), poisson_glmmTMB = tmb_record(pois_tmb),
                    nb = tmb_record(nb))
  cat(sprintf("%s poisson %.6f (glmmTMB %.6f) nb %.6f phi %.4g\n", g, logLik(pois),
              logLik(pois_tmb), logLik(nb), sigma(nb)))
}

# the construction with K = I is glmer's own model
d <- obs
d$y <- data[["k1"]]
I <- diag(length(donor_ids))
dimnames(I) <- list(donor_ids, donor_ids)
f_id <- relmat_glmer(formula, d, poisson, I, "donor")
f_gl <- glmer(formula, d, family = poisson,
              control = glmerControl(optimizer = "bobyqa",
                                     optCtrl = list(rhoend = 1e-10, maxfun = 1e5)))
identity_check <- list(logLik_relmat = as.numeric(logLik(f_id)),
                       logLik_glmer = as.numeric(logLik(f_gl)))
cat(sprintf("K = I: logLik %.10f vs glmer %.10f\n", logLik(f_id), logLik(f_gl)))

out <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  glmmTMB = as.character(packageVersion("glmmTMB"))),
  formula = "y ~ 1 + offset(offset) + (1 | donor) + (1 | batch)",
  kinship_term = "donor",
  truth = truth,
  fits = fits,
  identity_check = identity_check
)
write_json(out, "kinship_reference.json", digits = NA, auto_unbox = TRUE, null = "null",
           na = "null")
