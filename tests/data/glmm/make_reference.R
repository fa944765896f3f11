# References for count models (issue 14): per gene, lme4's glmer(family = poisson) and
# glmmTMB's nbinom2 with the Laplace approximation, and the latent-scale variances of
# insight::get_variance (Nakagawa & Schielzeth 2017). Run from this folder:
#
#   cd tests/data/glmm && setarch -R Rscript make_reference.R     # ~2 minutes
#
# Writes counts.csv, obs.csv (simulated cells), truth.csv and reference.json. Made with
# R 4.2.2, lme4 1.1-31, glmmTMB 1.1.5, insight 0.19.0 (Debian bookworm; the versions are in
# the JSON). Real count data: lme4's grouseticks (ticks on red grouse chicks, Elston et
# al. 2001) and glmmTMB's Salamanders (Price et al. 2016), fitted as their packages'
# documentation does, are in reference.json too.

suppressPackageStartupMessages({
  library(lme4)
  library(glmmTMB)
  library(insight)
  library(jsonlite)
})

set.seed(20261127)
n <- 600
n_patient <- 12
n_batch <- 4
obs <- data.frame(
  cell = sprintf("c%03d", seq_len(n)),
  patient = sprintf("p%02d", sample(n_patient, n, replace = TRUE)),
  batch = sprintf("b%d", sample(n_batch, n, replace = TRUE))
)
obs$log_sf <- round(rnorm(n, 0, 0.4), 6)  # log size factors, centred
n_genes <- 24
truth <- data.frame(
  gene = sprintf("g%02d", seq_len(n_genes)),
  intercept = round(runif(n_genes, -1.5, 2.5), 3),
  sd_patient = round(c(0, 0, runif(n_genes - 2, 0.1, 0.8)), 3),
  sd_batch = round(c(runif(2, 0.1, 0.5), 0, 0, runif(n_genes - 4, 0, 0.5)), 3),
  theta = round(c(rep(1e6, 4), runif(n_genes - 4, 0.5, 20)), 3)  # 1e6: Poisson
)
pi_ <- match(obs$patient, sprintf("p%02d", seq_len(n_patient)))
bi_ <- match(obs$batch, sprintf("b%d", seq_len(n_batch)))
counts <- sapply(seq_len(n_genes), function(g) {
  t <- truth[g, ]
  eta <- t$intercept + obs$log_sf + rnorm(n_patient, 0, t$sd_patient)[pi_] +
    rnorm(n_batch, 0, t$sd_batch)[bi_]
  rnbinom(n, mu = exp(eta), size = t$theta)
})
colnames(counts) <- truth$gene
write.csv(obs, "obs.csv", row.names = FALSE)
write.csv(data.frame(cell = obs$cell, counts, check.names = FALSE), "counts.csv",
          row.names = FALSE)
write.csv(truth, "truth.csv", row.names = FALSE)

obs <- read.csv("obs.csv", stringsAsFactors = TRUE)
counts <- as.matrix(read.csv("counts.csv", row.names = 1, check.names = FALSE))
num <- function(x) unname(as.numeric(x))

# insight 0.19 has one approximation of the distribution-specific variance for log links,
# its default (Nakagawa et al. 2017's lognormal one, log(1 + 1/lambda [+ 1/theta])); it has
# no argument to choose the trigamma one, which the tests compute from lambda and theta
variances <- function(fit) {
  v <- tryCatch(suppressWarnings(get_variance(fit)), error = function(e) NULL)
  if (is.null(v)) NULL else lapply(v, function(x) num(x))
}

record <- function(fit, kind) {
  ll <- logLik(fit)
  if (kind == "glmer") {
    vc <- as.data.frame(VarCorr(fit))
    vcov_ <- setNames(as.list(vc$vcov), vc$grp)
    extra <- list(theta = num(getME(fit, "theta")), isSingular = isSingular(fit),
                  optimizer_code = fit@optinfo$conv$opt,
                  messages = fit@optinfo$conv$lme4$messages)
  } else {
    vc <- VarCorr(fit)$cond
    vcov_ <- lapply(vc, function(m) num(m[1, 1]))
    extra <- list(dispersion_size = sigma(fit), converged = fit$fit$convergence == 0,
                  pdHess = fit$sdr$pdHess)
  }
  fe <- if (kind == "glmer") fixef(fit) else fixef(fit)$cond
  c(list(logLik = as.numeric(ll), df = attr(ll, "df"), fixef = num(fe),
         fixef_names = names(fe), vcov = vcov_, variances = variances(fit)), extra)
}

fits <- list()
for (g in colnames(counts)) {
  d <- obs
  d$y <- counts[, g]
  p <- glmer(y ~ 1 + offset(log_sf) + (1 | patient) + (1 | batch), data = d,
             family = poisson, nAGQ = 1,
             control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10)))
  nb <- glmmTMB(y ~ 1 + offset(log_sf) + (1 | patient) + (1 | batch), data = d,
                family = nbinom2)
  fits[[length(fits) + 1]] <- c(list(gene = g, model = "poisson_glmer"), record(p, "glmer"))
  fits[[length(fits) + 1]] <- c(list(gene = g, model = "nbinom2_glmmTMB"), record(nb, "tmb"))
}

# real counts shipped with the packages
data(grouseticks, package = "lme4")
gt <- glmer(TICKS ~ YEAR + scale(HEIGHT) + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION),
            family = poisson, data = grouseticks,
            control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10)))
gt_nb <- glmmTMB(TICKS ~ YEAR + scale(HEIGHT) + (1 | BROOD) + (1 | LOCATION),
                 family = nbinom2, data = grouseticks)
data(Salamanders, package = "glmmTMB")
sal <- glmmTMB(count ~ spp + mined + (1 | site), family = nbinom2, data = Salamanders)
real <- list(
  grouseticks_poisson = c(list(formula = "TICKS ~ YEAR + scale(HEIGHT) + (1|BROOD) + (1|INDEX) + (1|LOCATION)"),
                          record(gt, "glmer")),
  grouseticks_nbinom2 = c(list(formula = "TICKS ~ YEAR + scale(HEIGHT) + (1|BROOD) + (1|LOCATION)"),
                          record(gt_nb, "tmb")),
  salamanders_nbinom2 = c(list(formula = "count ~ spp + mined + (1|site)"), record(sal, "tmb"))
)
write.csv(grouseticks, "grouseticks.csv", row.names = FALSE)
write.csv(Salamanders[, c("site", "mined", "spp", "count")], "salamanders.csv", row.names = FALSE)

out <- list(
  description = "per-gene Poisson (glmer, Laplace) and NB2 (glmmTMB) fits with latent-scale variances",
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  glmmTMB = as.character(packageVersion("glmmTMB")),
                  insight = as.character(packageVersion("insight"))),
  formula = "y ~ 1 + offset(log_sf) + (1 | patient) + (1 | batch)",
  fits = fits,
  real = real
)
write_json(out, "reference.json", digits = NA, auto_unbox = TRUE, null = "null", na = "null")
cat("wrote reference.json:", length(fits), "gene fits and", length(real), "real-data fits\n")
