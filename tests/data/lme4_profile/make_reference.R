#!/usr/bin/env Rscript
# lme4's likelihood-profile confidence intervals (confint(..., method = "profile")) of
# random-intercept models, REML and ML, at levels 0.95 and 0.90: the reference for
# profile-likelihood intervals in scvarpart. Writes reference.json in this folder.
# Usage:  cd tests/data/lme4_profile && Rscript make_reference.R     (~45 minutes, 1 core)
#
# Each model is fitted with bobyqa to rhoend = 1e-12 and profiled twice:
#  - lme4's default settings, profile(fit, signames = FALSE), which is what
#    confint(fit, method = "profile", oldNames = FALSE) does (checked below on the small
#    datasets): stored as lower_default / upper_default;
#  - a finer profile (smaller step `delta` on the zeta scale, see SETTINGS), whose
#    confint() ends are stored as lower / upper.
# lme4 always profiles the ML deviance: profile.merMod -> devfun2() calls refitML() on a
# REML fit first, so a REML record's interval is the interval of the ML fit (centred on the
# ML estimates, `profile_center`), and differs from the ML record's only by how well
# refitML's optimiser (bobyqa, default tolerance) reached the ML optimum.
#
# Doubles are written in the shortest form that reads back as the same double (up to 17
# significant digits; jsonlite's digits = NA stops at 15): preformatted, then written with
# write_json(digits = NA, json_verbatim = TRUE). Non-finite numbers and NA are null.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------
LEVELS <- c(0.95, 0.90)
SYNTH_GENES <- 1:6
CONTROL <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5))
# Fine profile: step delta on the signed-root-deviance (zeta) scale, profiled out to
# |zeta| = ZETA_MAX (alphamax chosen so that lme4's cutoff sqrt(qchisq(1 - alphamax,
# nptot)) equals ZETA_MAX; lme4's default alphamax = 0.01 gives 3.4-4.0 here). The spline
# through the points is inverted at zeta = +-1.96 / +-1.64, well inside the profiled range.
ZETA_MAX <- 3
DELTA <- c(small = 0.02, synth = 0.05)
MAXPTS <- 400

# ---------------------------------------------------------------------------------------
# Formatting helpers: fmt, jnum, jarr, jobj (doubles that round-trip)
# ---------------------------------------------------------------------------------------
source("../json_doubles.R")

# run expr, collecting warnings (muffled) and messages; returns list(value, warnings)
collect <- function(expr) {
  w <- character()
  value <- withCallingHandlers(expr,
    warning = function(c) { w <<- c(w, conditionMessage(c)); invokeRestart("muffleWarning") },
    message = function(c) invokeRestart("muffleMessage"))
  list(value = value, warnings = w)
}
count_msgs <- function(w) {
  if (!length(w)) return(list())
  tab <- table(w)
  lapply(names(tab), function(m) list(message = m, count = as.integer(tab[[m]])))
}
elapsed <- function() proc.time()[["elapsed"]]

# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
read_dataset <- function(name) {                  # factor columns as in ../<name>.json
  meta <- fromJSON(file.path("..", paste0(name, ".json")))
  frame <- read.csv(file.path("..", paste0(name, ".csv")))
  for (col in names(meta$columns)) {
    if (meta$columns[[col]] %in% c("factor", "ordered")) frame[[col]] <- factor(frame[[col]])
  }
  frame
}

cases <- list(
  list(dataset = "Dyestuff", formula = "Yield ~ 1 + (1 | Batch)"),
  list(dataset = "Dyestuff2", formula = "Yield ~ 1 + (1 | Batch)"),
  list(dataset = "Penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  list(dataset = "Pastes", formula = "strength ~ 1 + (1 | batch) + (1 | batch:cask)")
)
cases <- lapply(cases, function(case) c(case, list(frame = read_dataset(case$dataset),
                                                 gene = NA_character_, kind = "small")))

synth_obs <- read.csv(file.path("..", "synth_crossed", "obs.csv"), row.names = 1,
                      stringsAsFactors = TRUE)
synth_expr <- read.csv(gzfile(file.path("..", "synth_crossed", "expr.csv.gz")), row.names = 1)
stopifnot(identical(rownames(synth_obs), rownames(synth_expr)))
for (g in colnames(synth_expr)[SYNTH_GENES]) {
  frame <- synth_obs
  frame$expr <- synth_expr[[g]]
  cases[[length(cases) + 1]] <- list(
    dataset = "synth_crossed", gene = g, kind = "synth", frame = frame,
    formula = "expr ~ 1 + (1 | patient) + (1 | chemistry) + (1 | day) + (1 | operator)")
}

versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 Matrix = as.character(packageVersion("Matrix")),
                 minqa = as.character(packageVersion("minqa")),
                 jsonlite = as.character(packageVersion("jsonlite")))

# ---------------------------------------------------------------------------------------
# Fit, profile, confint
# ---------------------------------------------------------------------------------------
zeta_info <- function(pr, parms) {               # points and zeta range per parameter
  lapply(parms, function(p) {
    z <- pr$.zeta[pr$.par == p]
    list(n_points = length(z), zeta_min = jnum(min(z, na.rm = TRUE)),
         zeta_max = jnum(max(z, na.rm = TRUE)), n_na = sum(is.na(z)))
  })
}

records <- list()
t_start <- elapsed()
for (case in cases) {
  for (reml in c(TRUE, FALSE)) {
    label <- sprintf("%s%s %s", case$dataset, if (is.na(case$gene)) "" else paste0(" ", case$gene),
                     if (reml) "REML" else "ML")
    t0 <- elapsed()
    fitted <- collect(lmer(as.formula(case$formula), data = case$frame, REML = reml,
                           control = CONTROL))
    fit <- fitted$value
    t_fit <- elapsed() - t0

    nptot <- length(getME(fit, "theta")) + 1L + length(fixef(fit))
    alphamax <- pchisq(ZETA_MAX^2, nptot, lower.tail = FALSE)
    delta <- DELTA[[case$kind]]

    t0 <- elapsed()
    prof0 <- collect(profile(fit, signames = FALSE))
    t_prof0 <- elapsed() - t0
    t0 <- elapsed()
    prof <- collect(profile(fit, signames = FALSE, delta = delta, maxpts = MAXPTS,
                            alphamax = alphamax))
    t_prof <- elapsed() - t0

    ml <- refitML(fit)                                 # what the profile is centred on
    vc_ml <- as.data.frame(VarCorr(ml))
    center <- c(vc_ml$sdcor, fixef(ml))
    vc <- as.data.frame(VarCorr(fit))
    theta <- getME(fit, "theta")
    parms <- c(paste0("sd_", vc$var1[-nrow(vc)], "|", vc$grp[-nrow(vc)]), "sigma",
               names(fixef(fit)))                       # theta order, sigma, fixed effects
    stopifnot(setequal(parms, levels(prof$value$.par)))

    for (level in LEVELS) {
      ci0 <- collect(confint(prof0$value, level = level))
      ci <- collect(confint(prof$value, level = level))
      if (case$kind == "small") {                        # the default is confint()'s own
        direct <- suppressMessages(suppressWarnings(
          confint(fit, method = "profile", level = level, oldNames = FALSE)))
        stopifnot(identical(direct, ci0$value))
      }
      ci0v <- ci0$value[parms, , drop = FALSE]
      civ <- ci$value[parms, , drop = FALSE]
      records[[length(records) + 1]] <- list(
        dataset = case$dataset, gene = if (is.na(case$gene)) NULL else case$gene,
        formula = case$formula, method = if (reml) "REML" else "ML", REML = reml,
        level = jnum(level),
        parameters = parms,
        lower = jarr(civ[, 1]), upper = jarr(civ[, 2]),
        lower_default = jarr(ci0v[, 1]), upper_default = jarr(ci0v[, 2]),
        profile_center = jarr(center),
        profile = list(
          basis = "ML deviance (lme4 refits a REML fit by ML before profiling)",
          base_deviance_ML = jnum(deviance(ml)),
          call = sprintf("profile(fit, signames = FALSE, delta = %s, maxpts = %d, alphamax = %s)",
                         fmt(delta), MAXPTS, fmt(alphamax)),
          delta = jnum(delta), maxpts = MAXPTS, alphamax = jnum(alphamax),
          zeta_cutoff = jnum(sqrt(qchisq(1 - alphamax, nptot))),
          points = setNames(zeta_info(prof$value, parms), parms),
          warnings = count_msgs(prof$warnings),
          confint_warnings = count_msgs(ci$warnings),
          default_call = "profile(fit, signames = FALSE)  # = confint(fit, method = 'profile')",
          default_points = setNames(zeta_info(prof0$value, parms), parms),
          default_warnings = count_msgs(prof0$warnings),
          default_confint_warnings = count_msgs(ci0$warnings)
        ),
        fit = list(
          optimizer = fit@optinfo$optimizer, control = "bobyqa, rhoend = 1e-12, maxfun = 1e5",
          optimizer_code = fit@optinfo$conv$opt, feval = fit@optinfo$feval,
          conv_messages = as.list(fit@optinfo$conv$lme4$messages),
          warnings = as.list(fitted$warnings),
          n_obs = nobs(fit),
          n_levels = lapply(getME(fit, "flist"), nlevels),
          criterion_name = if (reml) "REMLcrit" else "deviance",
          criterion = jnum(if (reml) REMLcrit(fit) else deviance(fit, REML = FALSE)),
          theta = jarr(theta), theta_names = I(names(theta)),
          sigma = jnum(sigma(fit)),
          fixef = jobj(fixef(fit)),
          varcorr = lapply(seq_len(nrow(vc)), function(i) list(
            grp = vc$grp[i], var1 = if (is.na(vc$var1[i])) NULL else vc$var1[i],
            vcov = jnum(vc$vcov[i]), sdcor = jnum(vc$sdcor[i]))),
          isSingular = isSingular(fit)
        ),
        seconds = list(fit = jnum(round(t_fit, 3)), profile_default = jnum(round(t_prof0, 3)),
                       profile = jnum(round(t_prof, 3))),
        versions = versions
      )
      cat(sprintf("%-26s level %.2f  %s\n", label, level,
                  paste(sprintf("%s [%.6g, %.6g]", parms, civ[, 1], civ[, 2]), collapse = "; ")))
      cat(sprintf("%-26s   max |fine - default| / |fine| = %.2g\n", "",
                  max(abs(c(civ) - c(ci0v)) / pmax(abs(c(civ)), 1e-300), na.rm = TRUE)))
    }
    cat(sprintf("%-26s fit %.2fs, default profile %.1fs (%d warnings), fine profile %.1fs (%d rows, %d warnings)\n",
                label, t_fit, t_prof0, length(prof0$warnings), t_prof, nrow(prof$value),
                length(prof$warnings)))
    flush.console()
  }
}

write_json(records, "reference.json", digits = NA, auto_unbox = TRUE, pretty = FALSE,
           json_verbatim = TRUE, na = "null", null = "null")
cat(sprintf("%d records, %d bytes, total %.0f s; %s, lme4 %s\n", length(records),
            file.size("reference.json"), elapsed() - t_start, R.version.string,
            packageVersion("lme4")))
