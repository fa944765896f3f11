#!/usr/bin/env Rscript
# lme4 fits of the two-factor design, for tests/test_lme4_reference.py:
# y ~ 1 + (1 | donor) + (1 | plate) + (1 | day) per gene, ML and REML, with the default
# lmerControl() and again with bobyqa to rhoend = 1e-12 (tight).
# Usage: cd tests/data/two_factor && setarch -R Rscript make_reference.R   # ~3 minutes
suppressPackageStartupMessages(library(lme4))
obs <- read.csv(gzfile("obs.csv.gz"), row.names = 1, stringsAsFactors = TRUE)
expr <- read.csv(gzfile("expr.csv.gz"), row.names = 1)
stopifnot(identical(rownames(obs), rownames(expr)))
f <- y ~ 1 + (1 | donor) + (1 | plate) + (1 | day)
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5))
crit <- function(fit) fit@devcomp$cmp[[if (isREML(fit)) "REML" else "dev"]]
rows <- list()
for (g in colnames(expr)) {
  obs$y <- expr[[g]]
  for (reml in c(FALSE, TRUE)) {
    t0 <- proc.time()[["elapsed"]]
    fit <- lmer(f, obs, REML = reml)
    secs <- proc.time()[["elapsed"]] - t0
    fit_t <- lmer(f, obs, REML = reml, control = tight)
    vc <- as.data.frame(VarCorr(fit))
    rows[[length(rows) + 1]] <- data.frame(
      gene = g, REML = reml, objective = sprintf("%.17g", crit(fit)),
      objective_tight = sprintf("%.17g", crit(fit_t)), seconds = secs,
      singular = isSingular(fit),
      t(setNames(sprintf("%.17g", vc$vcov), paste0("var_", vc$grp))),
      check.names = FALSE
    )
  }
}
write.csv(do.call(rbind, rows), "lmer.csv", row.names = FALSE)
cat(sprintf("lme4 %s, %s\n", packageVersion("lme4"), R.version.string))
