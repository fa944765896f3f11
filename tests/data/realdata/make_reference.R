#!/usr/bin/env Rscript
# lme4 reference fits of every gene of the real datasets in this folder.
#
#   Rscript tests/data/realdata/make_reference.R [--datasets marioni,hsmm] [--genes N]
#
# Reads datasets.json (formulas, categorical columns) and <dataset>/expr.csv.gz,
# <dataset>/obs.csv (made by extract_debian.R / extract_scanpy.py). For every
# formula, REML and ML, and every gene it fits lmer(y ~ <formula>) three ways:
#   default  lmer() with lme4's default control (optimizer "nloptwrap", i.e.
#            nloptr's BOBYQA, lme4's default tolerances): what a user gets;
#   tight    minqa::bobyqa (rhoend = 1e-12, maxfun = 1e5) on lme4's own
#            deviance function (lmer(devFunOnly = TRUE)) from lme4's start
#            theta = 1: what lmer(control = lmerControl(optimizer = "bobyqa",
#            optCtrl = list(rhoend = 1e-12, maxfun = 1e5))) runs;
#   best     the lowest objective among default, tight, and bobyqa on the same
#            deviance function from two further starts of the relative
#            standard deviations theta: all 0.1 and all 3; each
#            run to rhoend = 1e-6, then, if within 1e-3 of the best so far,
#            polished with rhoend = 1e-12 from where it stopped.
#            The deviance function is built once per formula and method and
#            given each gene's response with lme4's own resp$setResp() (as
#            lme4's refit() does); every gene checks that it reproduces the
#            default fit's objective at its theta to 1e-8.
#            Its variances are theta^2 sigma^2 at the best theta, with sigma^2
#            computed as lme4 does (penalised RSS / n for ML, / (n - p) for REML).
# Objectives are lme4's: -2 logLik for ML (deviance(fit)) and the REML
# criterion (REMLcrit(fit) = -2 logLik of the REML fit) for REML.
# Writes <dataset>/lme4_<formula id>.csv.gz, one row per gene and method.
# Single-threaded (one R process, no forking); BLAS threads are the machine's
# default (Debian's reference BLAS is single-threaded).

get_script_dir <- function() {
  a <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", a[grep("^--file=", a)])
  if (length(f)) dirname(normalizePath(f[1])) else getwd()
}
here <- get_script_dir()
args <- commandArgs(trailingOnly = TRUE)
opt <- list(datasets = NULL, genes = NULL)
i <- 1L
while (i <= length(args)) {
  key <- sub("^--", "", args[[i]])
  if (!key %in% names(opt) || i == length(args)) stop("usage: --datasets a,b --genes N")
  opt[[key]] <- args[[i + 1L]]
  i <- i + 2L
}

suppressPackageStartupMessages({
  library(Matrix)
  library(lme4)
  library(jsonlite)
})

spec <- jsonlite::fromJSON(file.path(here, "datasets.json"), simplifyVector = TRUE)
datasets <- if (is.null(opt$datasets)) names(spec) else strsplit(opt$datasets, ",")[[1]]

ctrl_default <- lmerControl()

collapse_txt <- function(x) if (length(x)) paste(unique(gsub("[\r\n]+", " ", x)), collapse = " | ") else ""

# lmer with warnings and messages captured (as ../shared/tools/lme4/lmm_common.R)
fit_captured <- function(formula, data, REML, control, start = NULL) {
  warn <- character()
  msgs <- character()
  fit <- withCallingHandlers(
    tryCatch(lmer(formula, data = data, REML = REML, control = control, start = start),
             error = function(e) e),
    warning = function(w) {
      warn <<- c(warn, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      msgs <<- c(msgs, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    })
  list(fit = fit, warnings = warn, messages = msgs)
}

objective <- function(fit) -2 * as.numeric(logLik(fit))  # REMLcrit for REML fits

# variances of the random terms (by lme4's group name, e.g. "outcome:cancer") and sigma^2
variances <- function(fit) {
  vc <- as.data.frame(VarCorr(fit))
  v <- setNames(vc$vcov, vc$grp)
  v
}

fmt <- function(x, digits) ifelse(is.na(x), NA_character_, sprintf(paste0("%.", digits, "g"), x))

# sigma^2 and the random-term variances at theta, from lme4's deviance function
# (its environment holds the fit at the last theta it evaluated), computed as
# lme4's mkMerMod does: pwrss / n (ML) or pwrss / (n - p) (REML).
estimates_at <- function(devfun, theta, REML, terms) {
  obj <- devfun(theta)
  rho <- environment(devfun)
  pwrss <- rho$resp$wrss() + rho$pp$sqrL(1)
  n <- length(rho$resp$y)
  p <- ncol(rho$pp$X)
  s2 <- pwrss / if (REML) (n - p) else n
  out <- setNames(as.list(theta^2 * s2), terms)
  out$sigma2 <- s2
  out$obj <- obj
  out
}

run_bobyqa <- function(devfun, start, rhoend) {
  k <- length(start)
  tryCatch(minqa::bobyqa(start, devfun, lower = rep(0, k),
                         control = list(rhoend = rhoend, maxfun = 1e5)),
           error = function(e) NULL)
}

fit_gene <- function(form, data, REML, terms, devfun) {
  k <- length(terms)
  out <- list()
  d <- fit_captured(form, data, REML, ctrl_default)
  if (inherits(d$fit, "error")) {
    out$error <- conditionMessage(d$fit)
    return(out)
  }
  out$error <- ""
  f <- d$fit
  out$obj_default <- objective(f)
  v <- variances(f)
  for (t in terms) out[[paste0("var_", t)]] <- v[[t]]
  out$sigma2 <- v[["Residual"]]
  out$singular <- isSingular(f)
  oi <- f@optinfo
  conv <- c(oi$conv$lme4$messages, unlist(lapply(oi$warnings, function(x)
    if (is.character(x)) x else conditionMessage(x))))
  out$conv_messages <- collapse_txt(conv)
  out$warnings <- collapse_txt(d$warnings)
  out$feval <- if (is.null(oi$feval)) NA else oi$feval
  theta_default <- unname(getME(f, "theta"))

  # lme4's deviance function of this (formula, method), with this gene's response
  environment(devfun)$resp$setResp(data$y__)
  at_default <- devfun(theta_default)
  if (abs(at_default - out$obj_default) > 1e-8 * max(1, abs(out$obj_default)))
    stop("deviance function disagrees with lmer at its optimum: ", at_default, " vs ",
         out$obj_default)
  # tight: minqa's bobyqa from lme4's start, as lmer(control = ctrl_tight) runs it
  o <- run_bobyqa(devfun, rep(1, k), 1e-12)
  out$obj_tight <- if (is.null(o)) NA else o$fval
  best <- list(obj = out$obj_default, theta = theta_default, from = "default")
  if (!is.null(o) && o$fval < best$obj) best <- list(obj = o$fval, theta = o$par, from = "tight")
  # restarts, each polished to rhoend = 1e-12 from where it stopped
  starts <- list(rep(0.1, k), rep(3, k))
  for (si in seq_along(starts)) {
    o <- run_bobyqa(devfun, starts[[si]], 1e-6)
    if (is.null(o)) next
    if (o$fval < best$obj + 1e-3) {
      o2 <- run_bobyqa(devfun, o$par, 1e-12)
      if (!is.null(o2) && o2$fval < o$fval) o <- o2
    }
    if (is.finite(o$fval) && o$fval < best$obj - 1e-10)
      best <- list(obj = o$fval, theta = o$par, from = paste0("start", si))
  }
  e <- estimates_at(devfun, best$theta, REML, terms)
  out$obj_best <- best$obj
  out$best_from <- best$from
  for (t in terms) out[[paste0("best_var_", t)]] <- e[[t]]
  out$best_sigma2 <- e$sigma2
  out$theta_default <- paste(sprintf("%.8g", theta_default), collapse = ";")
  out$theta_best <- paste(sprintf("%.8g", best$theta), collapse = ";")
  out
}

for (ds in datasets) {
  dir <- file.path(here, ds)
  obs <- utils::read.csv(file.path(dir, "obs.csv"), check.names = FALSE, stringsAsFactors = FALSE)
  expr <- utils::read.csv(gzfile(file.path(dir, "expr.csv.gz")), check.names = FALSE)
  stopifnot(identical(as.character(expr[[1]]), as.character(obs[[1]])))
  genes <- colnames(expr)[-1]
  Y <- as.matrix(expr[, -1])
  if (!is.null(opt$genes)) {
    genes <- genes[seq_len(min(length(genes), as.integer(opt$genes)))]
  }
  for (v in spec[[ds]]$categorical) obs[[v]] <- factor(obs[[v]])
  for (fid in names(spec[[ds]]$formulas)) {
    ftxt <- spec[[ds]]$formulas[[fid]]
    form <- as.formula(paste("y__", ftxt), env = globalenv())
    # lme4's names of the random terms, in its own order
    rt <- lFormula(form, data = cbind(obs, y__ = Y[, 1]))$reTrms
    terms <- names(rt$cnms)
    recs <- list()
    t0 <- proc.time()[["elapsed"]]
    for (REML in c(TRUE, FALSE)) {
      data <- obs
      data$y__ <- Y[, 1]
      devfun <- lmer(form, data = data, REML = REML, control = ctrl_default, devFunOnly = TRUE)
      for (g in genes) {
        data$y__ <- Y[, g]
        r <- fit_gene(form, data, REML, terms, devfun)
        recs[[length(recs) + 1L]] <- c(list(gene = g, method = if (REML) "REML" else "ML"), r)
      }
    }
    keys <- unique(unlist(lapply(recs, names)))
    res <- as.data.frame(lapply(setNames(keys, keys), function(k)
      unlist(lapply(recs, function(r) if (is.null(r[[k]])) NA else r[[k]]))),
      stringsAsFactors = FALSE, check.names = FALSE)
    for (k in grep("^obj_", names(res))) res[[k]] <- fmt(as.numeric(res[[k]]), 15)
    for (k in grep("var_|sigma2", names(res))) res[[k]] <- fmt(as.numeric(res[[k]]), 8)
    out <- file.path(dir, sprintf("lme4_%s.csv.gz", fid))
    con <- gzfile(out, "w", compression = 9)
    utils::write.csv(res, con, row.names = FALSE, na = "")
    close(con)
    message(sprintf("%s %s (%s): %d genes x 2 methods in %.1f s -> %s", ds, fid, ftxt,
                    length(genes), proc.time()[["elapsed"]] - t0, out))
  }
}
