#!/usr/bin/env Rscript
# lme4's conditional modes and conditional variances on InstEval (4,114 random effects),
# for tests/test_lme4_terms.py: REML fit of y ~ 1 + (1 | s) + (1 | d) + (1 | dept) on
# ../InstEval.csv.gz (lme4's InstEval as shipped in tests/data), default lmerControl().
# Keeps every level of dept, and of s and d the first 40 levels (in R's numeric order)
# plus the 5 with the largest and the 5 with the smallest mode: a small file.
# Usage: cd tests/data/lme4_terms && setarch -R Rscript insteval_blups.R   # ~1 minute
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})
d <- read.csv(gzfile("../InstEval.csv.gz"))
for (col in c("s", "d", "dept", "service")) d[[col]] <- factor(d[[col]])
fit <- lmer(y ~ 1 + (1 | s) + (1 | d) + (1 | dept), d, REML = TRUE)
re <- ranef(fit, condVar = TRUE)
# doubles as the shortest-safe 17 digits, marked to be unquoted below
num <- function(x) I(sprintf("@@%.17g", x))
out <- list()
for (g in names(re)) {
  modes <- re[[g]][, 1]
  postvar <- attr(re[[g]], "postVar")[1, 1, ]
  keep <- seq_along(modes)
  if (length(modes) > 100) {
    ord <- order(modes)
    keep <- sort(unique(c(1:40, head(ord, 5), tail(ord, 5))))
  }
  out[[g]] <- list(
    levels = I(rownames(re[[g]])[keep]),
    modes = num(modes[keep]),
    condvar = num(postvar[keep]),
    max_abs_mode = num(max(abs(modes))),
    n_levels = length(modes)
  )
}
res <- list(
  description = paste(
    "lme4 ranef(condVar = TRUE) of InstEval, REML, y ~ 1 + (1 | s) + (1 | d) + (1 | dept);",
    "modes and condvar (postVar, with sigma^2) of a subset of levels per factor"
  ),
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))),
  made_by = "insteval_blups.R",
  theta = num(getME(fit, "theta")),
  theta_names = I(names(getME(fit, "theta"))),
  sigma = num(sigma(fit)),
  objective = num(fit@devcomp$cmp[["REML"]]),
  ranef = out
)
txt <- toJSON(res, auto_unbox = TRUE, digits = NA, pretty = FALSE)
txt <- gsub('"@@([^"]*)"', "\\1", txt)
writeLines(txt, "insteval_blups.json")
cat("wrote insteval_blups.json\n")
