# lme4's fixed effects and their covariance (vcov) for random-intercept models of its
# bundled datasets, by ML and REML: the reference of tests/test_fixed_effects.py.
# Run from tests/data:  Rscript lme4_vcov/make_reference.R  (writes lme4_vcov/vcov.json)
suppressPackageStartupMessages({library(lme4); library(jsonlite)})

read_data <- function(name) {
  meta <- fromJSON(file.path(paste0(name, ".json")))
  path <- if (name == "InstEval") gzfile("InstEval.csv.gz") else paste0(name, ".csv")
  frame <- read.csv(path)
  for (col in names(meta$columns)) {
    if (meta$columns[[col]] %in% c("factor", "ordered")) frame[[col]] <- factor(frame[[col]])
  }
  frame
}

cases <- list(
  list("Dyestuff", "Yield ~ 1 + (1 | Batch)"),
  list("Dyestuff2", "Yield ~ 1 + (1 | Batch)"),
  list("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  list("Pastes", "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
  list("cake", "angle ~ recipe + temp + (1 | recipe:replicate)"),
  list("sleepstudy", "Reaction ~ Days + (1 | Subject)"),
  list("InstEval", "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)")
)
control <- lmerControl(optimizer = "nloptwrap",
                       optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-12, maxeval = 1e5))
out <- list()
for (case in cases) {
  frame <- read_data(case[[1]])
  for (reml in c(TRUE, FALSE)) {
    fit <- lmer(as.formula(case[[2]]), data = frame, REML = reml, control = control)
    V <- as.matrix(vcov(fit))
    out[[length(out) + 1]] <- list(
      dataset = case[[1]], formula = case[[2]], REML = reml,
      criterion = if (reml) REMLcrit(fit) else deviance(fit),
      fixed_effects = as.list(fixef(fit)),
      vcov = unname(V), columns = colnames(V),
      se = as.list(sqrt(diag(V)))
    )
  }
}
meta <- list(
  note = paste("lme4 fixef and vcov (sigma^2 (X'V^-1X)^-1 at the optimum), nloptwrap run to",
               "1e-12 tolerances; made by lme4_vcov/make_reference.R"),
  lme4 = as.character(packageVersion("lme4")), R = R.version.string, fits = out
)
writeLines(toJSON(meta, auto_unbox = TRUE, digits = NA, pretty = TRUE), "lme4_vcov/vcov.json")
