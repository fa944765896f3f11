# RLRsim's exact restricted likelihood-ratio test of one variance component
# (Crainiceanu & Ruppert 2004; Scheipl, Greven & Kuechenhoff 2008) on simulated genes:
# y = mu + x beta + b_group + e, with 12 groups of unequal sizes, some genes without a
# group effect. Writes reference.json: the data, and per gene RLRsim's statistic and
# p-value (from 100,000 simulations, seed fixed) and lme4's REML criterion.
#   Rscript make_reference.R   (R 4.2, lme4 1.1-31, RLRsim 3.1-8; Debian r-cran-rlrsim)
suppressPackageStartupMessages({library(lme4); library(RLRsim); library(jsonlite)})
set.seed(20261126)
n_groups <- 12
sizes <- sample(4:14, n_groups, replace = TRUE)
group <- factor(rep(sprintf("g%02d", seq_len(n_groups)), sizes))
n <- length(group)
x <- rnorm(n)
sds <- c(0, 0, 0, 0, 0.15, 0.3, 0.5, 1)  # group standard deviations; residual sd 1
Y <- sapply(sds, function(s) 1 + 0.5 * x + rnorm(n_groups, sd = s)[group] + rnorm(n))
genes <- lapply(seq_along(sds), function(g) {
  y <- Y[, g]
  m <- lmer(y ~ x + (1 | group), REML = TRUE)
  set.seed(g)
  t <- exactRLRT(m, nsim = 100000)
  list(sd = sds[g], rlrt = unname(t$statistic), p = t$p.value, reml = unname(REMLcrit(m)))
})
out <- list(group = as.character(group), x = x, Y = Y, genes = genes,
            note = "RLRsim exactRLRT, nsim = 1e5; lme4 REML fits")
write_json(out, "reference.json", digits = NA, auto_unbox = TRUE)
