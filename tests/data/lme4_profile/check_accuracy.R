#!/usr/bin/env Rscript
# Accuracy check of reference.json: the profile-interval ends found directly by root
# finding, without lme4's spline through the profile points, compared with the stored ends.
# Usage (after make_reference.R):  cd tests/data/lme4_profile && Rscript check_accuracy.R
# (~15 minutes, 1 core). Writes accuracy.csv and prints a summary.
#
# An end is where lme4's signed root deviance zeta(x) = sign(x - x_hat) sqrt(D(x) - D_hat)
# reaches -+qnorm((1 + level) / 2), D(x) the ML deviance minimised over the other
# parameters with parameter x held fixed (lme4 profiles the ML deviance for REML fits too).
#  - sd_* and sigma: D from lme4's own profiling function (lme4:::devfun2, the function
#    profile() uses), minimised over the others by minqa::bobyqa (rhoend 1e-11, restarted);
#  - fixed effect (Intercept): D = deviance of lmer(y ~ 0 + <random terms>, offset = x,
#    REML = FALSE) with bobyqa to rhoend = 1e-12.
# Roots by uniroot to ~1e-12 relative. As in confint(), a lower end below the parameter's
# bound (sd 0) is the bound.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})
CONTROL <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5))

ref <- fromJSON("reference.json", simplifyVector = FALSE)
key <- function(r) paste(r$dataset, if (is.null(r$gene)) "" else r$gene)

read_dataset <- function(name) {
  meta <- fromJSON(file.path("..", paste0(name, ".json")))
  frame <- read.csv(file.path("..", paste0(name, ".csv")))
  for (col in names(meta$columns)) {
    if (meta$columns[[col]] %in% c("factor", "ordered")) frame[[col]] <- factor(frame[[col]])
  }
  frame
}
synth_obs <- read.csv(file.path("..", "synth_crossed", "obs.csv"), row.names = 1,
                      stringsAsFactors = TRUE)
synth_expr <- read.csv(gzfile(file.path("..", "synth_crossed", "expr.csv.gz")), row.names = 1)
frame_of <- function(r) {
  if (r$dataset != "synth_crossed") return(read_dataset(r$dataset))
  frame <- synth_obs
  frame$expr <- synth_expr[[r$gene]]
  frame
}

exact_ends <- function(fit, frame, formula, levels) {
  dd <- lme4:::devfun2(fit, useSc = TRUE, signames = FALSE)   # refits ML if REML
  base <- attr(dd, "basedev")
  opt <- attr(dd, "optimum")
  np <- length(getME(fit, "theta")) + 1L                       # sd's and sigma
  lower <- c(getME(fit, "lower"), 0)
  dev_at <- function(w, x) {                                     # profiled ML deviance
    if (w <= np) {
      f <- function(p) { q <- numeric(np); q[w] <- x; q[-w] <- p; dd(q) }
      start <- opt[seq_len(np)][-w]
      s0 <- max(abs(start), 0.1 * opt[[np]])
      best <- Inf
      for (rb in c(0.2, 1e-3)) {                                  # restart once, smaller steps
        o <- minqa::bobyqa(start, f, lower = lower[-w],
                           control = list(rhobeg = rb * s0, rhoend = 1e-11 * s0))
        if (o$fval < best) { best <- o$fval; start <- o$par }
      }
      best
    } else {                                                      # the intercept
      rhs <- sub("^[^~]*~ *1 *\\+", "~ 0 +", formula)
      f0 <- as.formula(paste(sub("~.*$", "", formula), rhs))
      deviance(suppressMessages(suppressWarnings(
        lmer(f0, data = frame, REML = FALSE, offset = rep(x, nrow(frame)), control = CONTROL))))
    }
  }
  names_all <- names(opt)
  out <- list()
  for (w in seq_along(opt)) {
    pw <- opt[[w]]
    scale <- if (w <= np) max(abs(pw), opt[[np]] * 0.1) else max(attr(dd, "stderr")[w - np], 1e-8)
    D <- function(x) dev_at(w, x) - base
    for (level in levels) {
      z2 <- qnorm((1 + level) / 2)^2
      g <- function(x) D(x) - z2
      tol <- 1e-12 * scale
      if (w < np) {                                               # sd: bounded below by 0
        lo <- if (g(0) <= 0) 0 else uniroot(g, c(0, pw), tol = tol, maxiter = 200)$root
      } else {                                                    # sigma, fixed effect
        a <- if (w == np) pw / 2 else pw - scale
        while (g(a) <= 0) a <- if (w == np) a / 2 else pw - 2 * (pw - a)
        lo <- uniroot(g, c(a, pw), tol = tol, maxiter = 200)$root
      }
      b <- pw + max(abs(pw), scale)
      while (g(b) <= 0) b <- pw + 2 * (b - pw)
      hi <- uniroot(g, c(pw, b), tol = tol, maxiter = 200)$root
      out[[length(out) + 1]] <- data.frame(parameter = names_all[w], level = level,
                                           exact_lower = lo, exact_upper = hi)
    }
  }
  do.call(rbind, out)
}

rows <- list()
t_start <- proc.time()[["elapsed"]]
for (k in unique(vapply(ref, key, ""))) {
  recs <- Filter(function(r) key(r) == k, ref)
  r_ml <- Filter(function(r) r$method == "ML", recs)[[1]]
  frame <- frame_of(r_ml)
  fit <- suppressMessages(lmer(as.formula(r_ml$formula), data = frame, REML = FALSE, control = CONTROL))
  t0 <- proc.time()[["elapsed"]]
  ex <- exact_ends(fit, frame, r_ml$formula, unique(vapply(recs, function(r) r$level, 0)))
  for (r in recs) {
    e <- ex[ex$level == r$level, ]
    e <- e[match(unlist(r$parameters), e$parameter), ]
    num <- function(v) vapply(v, function(x) if (is.null(x)) NA_real_ else x, 0)
    for (end in c("lower", "upper")) {
      exact <- e[[paste0("exact_", end)]]
      fine <- num(r[[end]]); dflt <- num(r[[paste0(end, "_default")]])
      rows[[length(rows) + 1]] <- data.frame(
        dataset = r$dataset, gene = if (is.null(r$gene)) "" else r$gene, method = r$method,
        level = r$level, parameter = e$parameter, end = end, exact = exact,
        reference = fine, default = dflt,
        relerr_reference = abs(fine - exact) / pmax(abs(exact), 1e-300),
        relerr_default = abs(dflt - exact) / pmax(abs(exact), 1e-300))
    }
  }
  cat(sprintf("%-24s %.0f s\n", k, proc.time()[["elapsed"]] - t0)); flush.console()
}
acc <- do.call(rbind, rows)
acc$relerr_reference[acc$exact == 0 & acc$reference == 0] <- 0
acc$relerr_default[acc$exact == 0 & acc$default == 0] <- 0
write.csv(transform(acc, exact = sprintf("%.12g", exact), reference = sprintf("%.12g", reference),
                    default = sprintf("%.12g", default),
                    relerr_reference = sprintf("%.2g", relerr_reference),
                    relerr_default = sprintf("%.2g", relerr_default)),
          "accuracy.csv", row.names = FALSE)
summ <- aggregate(cbind(relerr_reference, relerr_default) ~ dataset + method, acc, max)
print(summ, digits = 3)
cat(sprintf("overall max relative error: reference %.2g, lme4 default %.2g; %.0f s\n",
            max(acc$relerr_reference), max(acc$relerr_default),
            proc.time()[["elapsed"]] - t_start))
