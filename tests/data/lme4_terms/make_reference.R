# lme4 reference fits for random slopes, lme4qtl-style relationship-matrix (kinship) terms
# and observation weights. Run from this folder:
#
#   cd tests/data/lme4_terms && Rscript make_reference.R
#
#   (the committed files were made with `setarch -R Rscript make_reference.R`, see below)
#
# Writes the CSV inputs and one JSON of fits per case into the current directory and prints
# a summary table. The data are deterministic (every simulated case has its own set.seed).
# lme4's fits with its default (loose) optimiser tolerances are not bitwise reproducible
# across R processes: the last bits of its criterion depend on memory alignment (address
# space randomisation), which moves where the optimiser stops (criterion ~1e-6, theta
# ~1e-4). Running with address space randomisation off (`setarch -R`) reproduced the files
# byte for byte here. The "tight" block of each fit is the optimum to 1e-12 tolerances and
# does not have this problem. Made with R 4.2.2,
# lme4 1.1-31, Matrix 1.5-3, jsonlite 1.8.4 (the versions are also written into each JSON).
#
# Every fit is run with lme4's default lmerControl() (optimizer nloptwrap); when that does
# not converge (nonzero optimizer code or a convergence message other than the singular-fit
# notice) the same model is fitted again with lmerControl(optimizer = "bobyqa") and both fits
# are stored ("attempt": "default" / "bobyqa_retry").
#
# All fits are computed from the CSVs as read back by read.csv, so the inputs are exactly the
# numbers in the files. Doubles in the JSONs are written with the shortest decimal form that
# round-trips (up to 17 significant digits): jsonlite's own digits = NA stops at 15
# significant digits, so doubles are preformatted and inserted with json_verbatim = TRUE.

suppressPackageStartupMessages({
  library(lme4)
  library(Matrix)
  library(jsonlite)
})

# ---------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------

source("../json_doubles.R")  # fmt, jnum, jarr, jmat, jobj: doubles that round-trip

write_out <- function(obj, path) {
  write_json(obj, path, digits = NA, auto_unbox = TRUE, pretty = FALSE,
             json_verbatim = TRUE, na = "null")
}
# CSV writer: numeric columns through fmt() (or a given number of significant digits)
write_csv <- function(df, path, signif_digits = NULL) {
  cols <- lapply(df, function(col) {
    if (is.numeric(col)) {
      if (is.null(signif_digits) || is.integer(col)) fmt(col)
      else sprintf(paste0("%.", signif_digits, "g"), col)
    } else {
      as.character(col)                                   # ids: no commas, no quotes
    }
  })
  lines <- do.call(paste, c(cols, sep = ","))
  writeLines(c(paste(names(df), collapse = ","), lines), path)
}

versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 Matrix = as.character(packageVersion("Matrix")),
                 jsonlite = as.character(packageVersion("jsonlite")))

# ---------------------------------------------------------------------------------------
# Fitting helpers
# ---------------------------------------------------------------------------------------

# Evaluate expr, collecting (and muffling) warnings and messages.
capture <- function(expr) {
  warns <- character(0)
  msgs <- character(0)
  value <- withCallingHandlers(expr,
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, trimws(conditionMessage(m))); invokeRestart("muffleMessage") })
  list(value = value, warnings = warns, messages = msgs)
}

SINGULAR_MSG <- "boundary (singular) fit: see help('isSingular')"

is_converged <- function(fit) {
  conv <- fit@optinfo$conv
  msgs <- setdiff(conv$lme4$messages, SINGULAR_MSG)
  isTRUE(conv$opt == 0) && length(msgs) == 0
}

# lme4qtl::relmatLmer's construction, with lmer's own body for the rest: the rows of Zt
# for `relfactor` are replaced by R %*% Zt_f with R = chol(K) (upper triangular, K = R'R),
# K ordered as the factor's levels; the donor effects of the fitted model are then
# b = R' u* with u* ~ N(0, sigma_d^2 I), i.e. b ~ N(0, sigma_d^2 K).
relmat_lmer <- function(formula, data, REML, control, K, relfactor) {
  mc <- match.call()
  lmod <- lFormula(formula, data = data, REML = REML, control = control)
  cnms <- lmod$reTrms$cnms
  idx <- which(names(cnms) == relfactor)
  stopifnot(length(idx) == 1, identical(cnms[[idx]], "(Intercept)"))
  lev <- levels(lmod$reTrms$flist[[relfactor]])
  stopifnot(identical(rownames(K), lev), identical(colnames(K), lev))
  relfac <- Matrix::chol(Matrix(K, sparse = FALSE))          # upper triangular R
  Ztlist <- lmod$reTrms$Ztlist
  Ztlist[[idx]] <- as(relfac %*% Ztlist[[idx]], "CsparseMatrix")
  lmod$reTrms$Ztlist <- Ztlist
  lmod$reTrms$Zt <- as(do.call(rbind, Ztlist), "CsparseMatrix")
  mcout <- mc
  mcout$formula <- lmod$formula
  lmod$formula <- NULL
  devfun <- do.call(mkLmerDevfun, c(lmod, list(control = control)))
  opt <- optimizeLmer(devfun, optimizer = control$optimizer, restart_edge = control$restart_edge,
                      boundary.tol = control$boundary.tol, control = control$optCtrl,
                      calc.derivs = control$calc.derivs, use.last.params = control$use.last.params)
  cc <- checkConv(attr(opt, "derivs"), opt$par, ctrl = control$checkConv,
                  lbound = environment(devfun)$lower)
  fit <- mkMerMod(environment(devfun), opt, lmod$reTrms, fr = lmod$fr, mc = mcout, lme4conv = cc)
  relfac <- as.matrix(relfac)
  dimnames(relfac) <- list(lev, lev)
  attr(fit, "relfac") <- relfac
  fit
}

# The profiled criterion by dense n x n algebra at the fit's theta:
# V0 = Z Lambda Lambda' Z' + W^-1 (V = sigma^2 V0); ML: n (1 + log(2 pi q / n)) + log|V0|,
# REML: (n-p) (1 + log(2 pi q / (n-p))) + log|V0| + log|X' V0^-1 X|, q = r' V0^-1 r at the
# GLS beta. V0 may be given (the kinship check builds it from K directly).
dense_objective <- function(fit, V0 = NULL) {
  X <- getME(fit, "X")
  y <- getME(fit, "y")
  w <- weights(fit)
  if (is.null(V0)) {
    ZL <- as.matrix(getME(fit, "Z") %*% getME(fit, "Lambda"))
    V0 <- tcrossprod(ZL) + diag(1 / w, length(y))
  }
  L <- chol(V0)
  ldV <- 2 * sum(log(diag(L)))
  Xs <- backsolve(L, X, transpose = TRUE)
  ys <- backsolve(L, y, transpose = TRUE)
  XtVX <- crossprod(Xs)
  beta <- solve(XtVX, crossprod(Xs, ys))
  q <- sum((ys - Xs %*% beta)^2)
  n <- length(y)
  p <- ncol(X)
  if (isREML(fit)) {
    (n - p) * (1 + log(2 * pi * q / (n - p))) + ldV + as.numeric(determinant(XtVX)$modulus)
  } else {
    n * (1 + log(2 * pi * q / n)) + ldV
  }
}

# One fit -> list for the JSON
fit_record <- function(fit, case, model, gene, attempt, cap, extra = list()) {
  reml <- isREML(fit)
  theta <- getME(fit, "theta")
  cnms <- getME(fit, "cnms")
  vc <- as.data.frame(VarCorr(fit))
  se <- sqrt(diag(as.matrix(vcov(fit))))
  cmp <- fit@devcomp$cmp
  ll <- logLik(fit)
  re <- ranef(fit, condVar = TRUE)
  ranef_out <- list()
  for (g in names(re)) {
    df <- re[[g]]
    pv <- attr(df, "postVar")
    term_cols <- unname(cnms[names(cnms) == g])
    if (!is.list(pv)) pv <- list(pv)
    stopifnot(length(pv) == length(term_cols))
    condvar <- lapply(seq_along(pv), function(t) {
      arr <- pv[[t]]
      k <- length(term_cols[[t]])
      stopifnot(dim(arr)[1] == k, dim(arr)[2] == k, dim(arr)[3] == nrow(df))
      list(columns = I(term_cols[[t]]),
           matrices = lapply(seq_len(dim(arr)[3]), function(i) jmat(matrix(arr[, , i], k, k))))
    })
    ranef_out[[g]] <- list(levels = I(rownames(df)), columns = I(colnames(df)),
                           modes = jmat(as.matrix(df)), condvar = condvar)
  }
  conv <- fit@optinfo$conv
  rec <- list(
    case = case, model = model, gene = gene,
    formula = paste(deparse(formula(fit), width.cutoff = 500L), collapse = " "),
    REML = reml,
    optimizer = fit@optinfo$optimizer,
    attempt = attempt,
    n_obs = nobs(fit),
    n_levels = as.list(vapply(getME(fit, "flist"), nlevels, 1L)),
    theta = jarr(theta),
    theta_names = I(names(theta)),
    lower = jarr(getME(fit, "lower")),
    terms = lapply(seq_along(cnms), function(i) list(group = names(cnms)[i], columns = I(cnms[[i]]))),
    sigma = jnum(sigma(fit)),
    varcorr = lapply(seq_len(nrow(vc)), function(i) list(
      grp = vc$grp[i], var1 = vc$var1[i], var2 = vc$var2[i],
      vcov = jnum(vc$vcov[i]), sdcor = jnum(vc$sdcor[i]))),
    fixef = jobj(fixef(fit)),
    fixef_se = jobj(se),
    objective_name = if (reml) "REMLcrit" else "deviance",
    objective = jnum(if (reml) cmp[["REML"]] else cmp[["dev"]]),
    logLik = jnum(as.numeric(ll)),
    logLik_df = as.integer(attr(ll, "df")),
    dense_objective = jnum(dense_objective(fit)),
    isSingular = isSingular(fit),
    converged = is_converged(fit),
    optimizer_code = conv$opt,
    feval = fit@optinfo$feval,
    conv_messages = I(as.character(conv$lme4$messages)),
    warnings = I(cap$warnings),
    messages = I(cap$messages),
    ranef = ranef_out
  )
  c(rec, extra)
}

summary_rows <- list()
add_summary <- function(rec) {
  summary_rows[[length(summary_rows) + 1]] <<- data.frame(
    case = rec$case, model = rec$model, gene = rec$gene, REML = rec$REML,
    optimizer = rec$optimizer, attempt = rec$attempt,
    objective = as.numeric(unclass(rec$objective)),
    minus_tight = as.numeric(unclass(rec$objective)) - as.numeric(unclass(rec$tight$objective)),
    dense_minus_lme4 = as.numeric(unclass(rec$dense_objective)) - as.numeric(unclass(rec$objective)),
    denseK_minus_lme4 = if (is.null(rec$dense_objective_from_K)) NA_real_ else
      as.numeric(unclass(rec$dense_objective_from_K)) - as.numeric(unclass(rec$objective)),
    singular = rec$isSingular, converged = rec$converged,
    n_warnings = length(rec$warnings), stringsAsFactors = FALSE)
}

# Fit with the default control; if not converged, again with bobyqa. `fitter(control)`
# returns the fitted model. Returns the list of records (1 or 2).
# The optimum to tight tolerances (both optimisers, the lower criterion kept): lme4's
# default stopping rule leaves the criterion up to ~1e-5 and theta up to ~1e-3 off the
# optimum, and where exactly it stops varies between R processes (see README). nloptr's own
# xtol_rel = 1e-4 stays in force under lme4's nloptwrap unless set, hence xtol_rel = 0.
TIGHT <- list(nloptwrap = lmerControl(optimizer = "nloptwrap",
                                      optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-12,
                                                     xtol_rel = 0, ftol_rel = 0, maxeval = 1e5)),
              bobyqa = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)))
tight_record <- function(fitter) {
  best <- NULL
  for (nm in names(TIGHT)) {
    fit <- capture(fitter(TIGHT[[nm]]))$value
    crit <- if (isREML(fit)) fit@devcomp$cmp[["REML"]] else fit@devcomp$cmp[["dev"]]
    if (is.null(best) || crit < best$crit) best <- list(fit = fit, crit = crit, optimizer = nm)
  }
  list(optimizer = best$optimizer, objective = jnum(best$crit),
       theta = jarr(getME(best$fit, "theta")), sigma = jnum(sigma(best$fit)))
}

fit_both <- function(fitter, case, model, gene, extra_fun = NULL) {
  out <- list()
  attempts <- list(default = lmerControl(), bobyqa_retry = lmerControl(optimizer = "bobyqa"))
  tight <- tight_record(fitter)
  for (a in names(attempts)) {
    cap <- capture(fitter(attempts[[a]]))
    fit <- cap$value
    extra <- if (is.null(extra_fun)) list() else extra_fun(fit)
    rec <- fit_record(fit, case, model, gene, a, cap, extra)
    rec$tight <- tight
    add_summary(rec)
    rec$dense_objective <- NULL                 # checked in the summary, not stored
    out[[length(out) + 1]] <- rec
    if (rec$converged) break
  }
  out
}

case_json <- function(case, description, files, models, fits, extra = list()) {
  c(list(case = case, description = description, versions = versions,
         made_by = "tests/data/lme4_terms/make_reference.R",
         files = files, models = models), extra, list(fits = fits))
}

# ---------------------------------------------------------------------------------------
# 1. sleepstudy
# ---------------------------------------------------------------------------------------
write_csv(data.frame(Reaction = sleepstudy$Reaction, Days = sleepstudy$Days,
                     Subject = as.character(sleepstudy$Subject)), "sleepstudy.csv")
ss <- read.csv("sleepstudy.csv", colClasses = c("numeric", "numeric", "character"))
ss$Subject <- factor(ss$Subject)
stopifnot(identical(ss$Reaction, sleepstudy$Reaction), identical(ss$Days, sleepstudy$Days),
          identical(levels(ss$Subject), levels(sleepstudy$Subject)))
ss_models <- list(
  corr = "Reaction ~ Days + (Days | Subject)",
  uncorr = "Reaction ~ Days + (Days || Subject)",
  slope_only = "Reaction ~ Days + (0 + Days | Subject)",
  two_terms = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"
)
fits <- list()
for (m in names(ss_models)) for (reml in c(TRUE, FALSE)) {
  fits <- c(fits, fit_both(function(ctrl) lmer(as.formula(ss_models[[m]]), data = ss, REML = reml,
                                               control = ctrl),
                           "sleepstudy", m, "Reaction"))
}
write_out(case_json("sleepstudy", "lme4::sleepstudy (18 subjects x 10 days), random slopes on Days",
                    list(data = "sleepstudy.csv"),
                    lapply(names(ss_models), function(m) list(name = m, formula = ss_models[[m]])),
                    fits),
          "sleepstudy_terms.json")

# ---------------------------------------------------------------------------------------
# 2. slopes: patient random intercept + slope on time, crossed batch and chem
# ---------------------------------------------------------------------------------------
set.seed(20240101)
n <- 800
n_pat <- 12
pat_ids <- sprintf("p%02d", 1:n_pat)
obs <- data.frame(
  cell = sprintf("c%03d", 0:(n - 1)),
  patient = pat_ids[sample(n_pat, n, replace = TRUE, prob = runif(n_pat, 0.5, 1.5))],
  batch = paste0("b", sample(1:4, n, replace = TRUE)),
  chem = paste0("chem", sample(1:3, n, replace = TRUE)),
  time = sample(0:5, n, replace = TRUE),
  log_umi = signif(rnorm(n, 8, 0.6), 7),
  stringsAsFactors = FALSE
)
obs$time <- as.integer(obs$time)
# per gene truth: intercept, log_umi and time slopes; patient intercept sd, slope sd and
# their correlation; batch sd; chem sd; residual sd
# (intercepts put the mean expression near 5)
beta_log_umi <- round(runif(25, -0.5, 1), 3)
beta0 <- round(runif(25, 4, 6) - 8 * beta_log_umi, 3)
truth <- data.frame(
  gene = sprintf("g%d", 0:24),
  kind = c(rep("general", 5), rep("slope_var_0", 4), rep("strong_int_slope_corr", 4),
           rep("batch_var_0", 4), rep("chem_var_0", 3), rep("tiny_within_patient_noise", 3),
           "no_random_variance", "large_all"),
  beta0 = beta0,
  beta_log_umi = beta_log_umi,
  beta_time = round(runif(25, -0.3, 0.3), 3),
  sd_patient = c(1.0, 0.5, 2.0, 0.3, 1.5,  1.0, 0.5, 2.0, 0.8,  1.0, 1.0, 1.0, 1.0,
                 1.0, 0.6, 1.5, 0.4,  1.0, 0.7, 1.2,  1.0, 0.5, 1.0,  0, 3.0),
  sd_time = c(0.3, 0.5, 0.1, 0.2, 0.8,  0, 0, 0, 0,  0.4, 0.4, 0.3, 0.3,
              0.2, 0.3, 0.1, 0.5,  0.3, 0.2, 0.1,  0.2, 0.1, 0.05,  0, 1.0),
  cor_patient = c(0, 0.3, -0.4, 0.5, -0.2,  0, 0, 0, 0,  0.95, -0.95, 1, -1,
                  0, 0.2, -0.3, 0.1,  0, 0.4, -0.1,  0.3, 0, -0.5,  0, 0.6),
  sd_batch = c(0.5, 0.3, 1.0, 0.2, 0.4,  0.5, 0.3, 0.2, 0.6,  0.4, 0.3, 0.5, 0.2,
               0, 0, 0, 0,  0.3, 0.5, 0.2,  0.2, 0.1, 0.3,  0, 1.5),
  sd_chem = c(0.4, 0.2, 0.5, 1.0, 0.3,  0.3, 0.2, 0.6, 0.4,  0.3, 0.2, 0.4, 0.3,
              0.5, 0.3, 0.2, 0.6,  0, 0, 0,  0.2, 0.1, 0.3,  0, 1.2),
  sigma = c(1.0, 0.8, 1.5, 0.5, 2.0,  1.0, 0.7, 1.2, 0.9,  0.8, 1.0, 0.6, 0.9,
            1.0, 0.7, 1.1, 0.8,  1.0, 0.9, 0.6,  0.01, 0.05, 0.001,  1.0, 0.3),
  stringsAsFactors = FALSE
)
pidx <- match(obs$patient, pat_ids)
bidx <- match(obs$batch, paste0("b", 1:4))
cidx <- match(obs$chem, paste0("chem", 1:3))
Y <- sapply(seq_len(nrow(truth)), function(j) {
  t <- truth[j, ]
  z1 <- rnorm(n_pat)
  z2 <- rnorm(n_pat)
  a <- t$sd_patient * z1
  s <- t$sd_time * (t$cor_patient * z1 + sqrt(1 - t$cor_patient^2) * z2)
  cb <- t$sd_batch * rnorm(4)
  cc <- t$sd_chem * rnorm(3)
  y <- t$beta0 + t$beta_log_umi * obs$log_umi + t$beta_time * obs$time +
    a[pidx] + s[pidx] * obs$time + cb[bidx] + cc[cidx] + t$sigma * rnorm(n)
  signif(y, 10)
})
colnames(Y) <- truth$gene
write_csv(obs, "slopes_obs.csv", signif_digits = 10)
write_csv(data.frame(cell = obs$cell, Y, check.names = FALSE), "slopes_Y.csv", signif_digits = 10)
write_csv(truth, "slopes_truth.csv")

obs <- read.csv("slopes_obs.csv", colClasses = c("character", "character", "character",
                                                 "character", "numeric", "numeric"))
for (f in c("patient", "batch", "chem")) obs[[f]] <- factor(obs[[f]])
Yr <- read.csv("slopes_Y.csv", check.names = FALSE)
stopifnot(identical(Yr$cell, obs$cell))
slopes_formula <- "y ~ log_umi + time + (1 + time | patient) + (1 | batch) + (1 | chem)"
fits <- list()
for (gname in truth$gene) for (reml in c(TRUE, FALSE)) {
  dat <- obs
  dat$y <- Yr[[gname]]
  fits <- c(fits, fit_both(function(ctrl) lmer(as.formula(slopes_formula), data = dat, REML = reml,
                                               control = ctrl),
                           "slopes", "slopes", gname))
}
write_out(case_json("slopes",
                    paste("Simulated: 800 cells, 12 patients with a random intercept and slope on",
                          "time (0..5, varies within patient), crossed batch (4) and chem (3)."),
                    list(obs = "slopes_obs.csv", Y = "slopes_Y.csv", truth = "slopes_truth.csv"),
                    list(list(name = "slopes", formula = slopes_formula)), fits,
                    list(seed = 20240101L)),
          "slopes.json")

# ---------------------------------------------------------------------------------------
# 3. kinship: donor effects with covariance sigma_d^2 K, crossed batch
# ---------------------------------------------------------------------------------------
set.seed(20240202)
n_donor <- 40
n_snp <- 200
donor_ids <- sprintf("d%02d", 1:n_donor)
freq <- runif(n_snp, 0.1, 0.5)
G <- matrix(rbinom(n_donor * n_snp, 2, rep(freq, each = n_donor)), n_donor, n_snp)
# relatives: donor b copies a share of donor a's genotypes
relatives <- data.frame(a = c(1, 3, 5, 7, 7, 10, 12), b = c(2, 4, 6, 8, 9, 11, 13),
                        share = c(0.5, 0.5, 0.25, 0.5, 0.5, 0.9, 0.125))
for (i in seq_len(nrow(relatives))) {
  idx <- sample(n_snp, round(relatives$share[i] * n_snp))
  G[relatives$b[i], idx] <- G[relatives$a[i], idx]
}
# standardised by the simulated allele frequencies (centring by the sample means instead
# would make K singular: its rows would sum to zero)
Gs <- sweep(sweep(G, 2, 2 * freq), 2, sqrt(2 * freq * (1 - freq)), "/")
K <- tcrossprod(Gs) / n_snp
K <- signif((K + t(K)) / 2, 10)               # written with 10 significant digits
dimnames(K) <- list(donor_ids, donor_ids)
K_min_eigen_raw <- min(eigen(K, symmetric = TRUE, only.values = TRUE)$values)
K_jitter <- 0
if (K_min_eigen_raw < 1e-6 || inherits(try(chol(K), silent = TRUE), "try-error")) {
  K_jitter <- 1e-6
  diag(K) <- diag(K) + K_jitter
}
K_min_eigen <- min(eigen(K, symmetric = TRUE, only.values = TRUE)$values)
write_csv(data.frame(donor = donor_ids, K, check.names = FALSE), "kinship_K.csv",
          signif_digits = 10)
Kr <- as.matrix(read.csv("kinship_K.csv", row.names = 1, check.names = FALSE))
stopifnot(max(abs(Kr - K)) < 1e-12, isSymmetric(Kr), identical(rownames(Kr), donor_ids),
          identical(colnames(Kr), donor_ids))
R_true <- chol(Kr)                                     # upper triangular, K = R'R

cells_per_donor <- sample(10:20, n_donor, replace = TRUE)
nk <- sum(cells_per_donor)
kobs <- data.frame(
  cell = sprintf("c%03d", 0:(nk - 1)),
  donor = rep(donor_ids, cells_per_donor),
  batch = paste0("b", sample(1:5, nk, replace = TRUE)),
  log_umi = signif(rnorm(nk, 8, 0.6), 7),
  stringsAsFactors = FALSE
)
beta_log_umi <- round(runif(25, -0.5, 1), 3)
beta0 <- round(runif(25, 4, 6) - 8 * beta_log_umi, 3)
ktruth <- data.frame(
  gene = sprintf("g%d", 0:24),
  beta0 = beta0,
  beta_log_umi = beta_log_umi,
  sd_donor = c(0, 0, 0, 0.1, 0.2, 0.3, 0.5, 0.5, 0.7, 1, 1, 1, 1.5, 2, 2,
               0.5, 1, 0.3, 0.8, 1.2, 0.4, 0.6, 1, 0.05, 3),
  sd_batch = c(0.5, 0, 1, 0.3, 0.5, 0, 0.2, 0.8, 0.4, 0, 0.3, 1, 0.5, 0.2, 0,
               0.6, 0.4, 0.7, 0, 0.2, 0.3, 0.1, 2, 0.5, 1),
  sigma = c(1, 1, 0.5, 1, 0.8, 1.2, 1, 0.6, 1, 0.9, 0.5, 1, 1.5, 1, 0.3,
            0.05, 2, 1, 0.7, 1, 0.4, 1.1, 1, 1, 0.2),
  stringsAsFactors = FALSE
)
didx <- match(kobs$donor, donor_ids)
kbidx <- match(kobs$batch, paste0("b", 1:5))
KY <- sapply(seq_len(nrow(ktruth)), function(j) {
  t <- ktruth[j, ]
  b <- as.numeric(t(R_true) %*% rnorm(n_donor, 0, t$sd_donor))   # cov sd_donor^2 K
  cb <- t$sd_batch * rnorm(5)
  signif(t$beta0 + t$beta_log_umi * kobs$log_umi + b[didx] + cb[kbidx] + t$sigma * rnorm(nk), 10)
})
colnames(KY) <- ktruth$gene
write_csv(kobs, "kinship_obs.csv", signif_digits = 10)
write_csv(data.frame(cell = kobs$cell, KY, check.names = FALSE), "kinship_Y.csv", signif_digits = 10)
write_csv(ktruth, "kinship_truth.csv")

kobs <- read.csv("kinship_obs.csv", colClasses = c("character", "character", "character", "numeric"))
kobs$donor <- factor(kobs$donor)
kobs$batch <- factor(kobs$batch)
stopifnot(identical(levels(kobs$donor), donor_ids))
KYr <- read.csv("kinship_Y.csv", check.names = FALSE)
stopifnot(identical(KYr$cell, kobs$cell))
kin_formula <- "y ~ log_umi + (1 | donor) + (1 | batch)"

# check of the construction: with K = I it is lmer's own fit
chk <- kobs
chk$y <- KYr[["g10"]]
I40 <- diag(n_donor)
dimnames(I40) <- list(donor_ids, donor_ids)
f_id <- relmat_lmer(as.formula(kin_formula), chk, TRUE, lmerControl(), I40, "donor")
f_lm <- lmer(as.formula(kin_formula), chk, REML = TRUE)
cat(sprintf("kinship construction with K = I vs lmer: max |theta diff| = %.3g, REMLcrit diff = %.3g\n",
            max(abs(getME(f_id, "theta") - getME(f_lm, "theta"))), REMLcrit(f_id) - REMLcrit(f_lm)))

Zd <- t(as.matrix(fac2sparse(kobs$donor)))          # n x 40 indicator, levels order
Zb <- t(as.matrix(fac2sparse(kobs$batch)))
kin_extra <- function(fit) {
  relfac <- attr(fit, "relfac")                       # R, K = R'R
  modes <- as.matrix(ranef(fit)$donor)[, 1]
  blup <- as.numeric(t(relfac) %*% modes)
  # the criterion by dense algebra from K itself
  th <- getME(fit, "theta")
  V0 <- th[["donor.(Intercept)"]]^2 * Zd %*% Kr %*% t(Zd) +
    th[["batch.(Intercept)"]]^2 * tcrossprod(Zb) + diag(nrow(Zd))
  stopifnot(identical(rownames(ranef(fit)$donor), rownames(relfac)))
  list(donor_blup_original = jarr(blup),
       dense_objective_from_K = jnum(dense_objective(fit, V0)))
}
fits <- list()
for (gname in ktruth$gene) for (reml in c(TRUE, FALSE)) {
  dat <- kobs
  dat$y <- KYr[[gname]]
  fits <- c(fits, fit_both(function(ctrl) relmat_lmer(as.formula(kin_formula), dat, reml, ctrl, Kr, "donor"),
                           "kinship", "kinship", gname, kin_extra))
}
write_out(case_json("kinship",
                    paste("Simulated: 40 donors with genetic relationship matrix K (200 SNPs),",
                          "10-20 cells per donor, crossed batch (5); donor effects ~ N(0, sigma_d^2 K)",
                          "fitted lme4qtl-style (Zt rows of donor replaced by chol(K) %*% Zt_donor)."),
                    list(obs = "kinship_obs.csv", Y = "kinship_Y.csv", K = "kinship_K.csv",
                         truth = "kinship_truth.csv"),
                    list(list(name = "kinship", formula = kin_formula, relmat = "donor",
                              relmat_file = "kinship_K.csv")),
                    fits,
                    list(seed = 20240202L,
                         K = list(n_snps = n_snp, allele_freq_range = jarr(c(0.1, 0.5)),
                                  standardisation = "(G - 2p) / sqrt(2p(1-p)) with the simulated p; K = Gs Gs' / n_snps",
                                  relatives = lapply(seq_len(nrow(relatives)), function(i) list(
                                    a = donor_ids[relatives$a[i]], b = donor_ids[relatives$b[i]],
                                    genotype_share = jnum(relatives$share[i]))),
                                  diagonal_jitter_added = jnum(K_jitter),
                                  min_eigenvalue_before_jitter = jnum(K_min_eigen_raw),
                                  min_eigenvalue = jnum(K_min_eigen)),
                         notes = I(c(
                           "relfac = chol(K) (upper triangular R, K = R'R), K ordered as levels(donor)",
                           "ranef$donor are modes of the transformed effect u*; the original-scale BLUP is donor_blup_original = t(R) %*% ranef modes",
                           "dense_objective_from_K is the ML deviance / REML criterion by dense algebra with V = sigma^2 (theta_d^2 Z_d K Z_d' + theta_b^2 Z_b Z_b' + I)")))),
          "kinship.json")

# ---------------------------------------------------------------------------------------
# 4. weights: crossed g and h, observation weights w (residual variance sigma^2 / w)
# ---------------------------------------------------------------------------------------
set.seed(20240303)
nw <- 500
ncells <- sample(1:50, nw, replace = TRUE)
wobs <- data.frame(
  obs = sprintf("o%03d", 0:(nw - 1)),
  g = sprintf("g%02d", sample(1:15, nw, replace = TRUE)),
  h = sprintf("h%d", sample(1:6, nw, replace = TRUE)),
  x = signif(rnorm(nw), 7),
  n_cells = as.integer(ncells),
  w = signif(ncells / mean(ncells), 10),
  stringsAsFactors = FALSE
)
wtruth <- data.frame(
  gene = sprintf("g%d", 0:24),
  beta0 = round(runif(25, 4, 6), 3),
  beta_x = round(runif(25, -1, 1), 3),
  sd_g = c(1, 0.5, 2, 0.3, 0, 1, 0.8, 0.4, 1.5, 0, 1, 0.6, 0.2, 1, 0.7,
           0.5, 1.2, 0.3, 1, 0.9, 0.1, 2, 0.5, 1, 0),
  sd_g_x = c(0, 0, 0, 0, 0, 0.5, 0.3, 0.8, 0.2, 0.4, 0.3, 0.6, 0.5, 1, 0.1,
             0.5, 0.3, 0.7, 0.2, 0.4, 0, 0.3, 1, 0.05, 0),
  cor_g = c(0, 0, 0, 0, 0, 0, 0.5, -0.5, 0.9, 0, -0.9, 1, 0.3, -0.3, 0,
            0.6, -1, 0.2, 0, 0.4, 0, -0.2, 0.7, 0, 0),
  sd_h = c(0.5, 1, 0, 0.3, 0.6, 0.4, 0, 0.8, 0.2, 0.5, 0.3, 0, 0.7, 0.4, 1,
           0.2, 0.5, 0, 0.6, 0.3, 0.4, 1, 0, 0.5, 0),
  sigma = c(1, 0.8, 1.5, 0.5, 1, 1, 0.7, 1.2, 0.9, 1, 0.6, 1, 0.8, 1.1, 0.5,
            1, 0.9, 0.4, 1.3, 1, 0.05, 2, 1, 0.7, 1),
  stringsAsFactors = FALSE
)
gidx <- match(wobs$g, sprintf("g%02d", 1:15))
hidx <- match(wobs$h, sprintf("h%d", 1:6))
WY <- sapply(seq_len(nrow(wtruth)), function(j) {
  t <- wtruth[j, ]
  z1 <- rnorm(15)
  z2 <- rnorm(15)
  a <- t$sd_g * z1
  s <- t$sd_g_x * (t$cor_g * z1 + sqrt(1 - t$cor_g^2) * z2)
  ch <- t$sd_h * rnorm(6)
  signif(t$beta0 + t$beta_x * wobs$x + a[gidx] + s[gidx] * wobs$x + ch[hidx] +
           t$sigma * rnorm(nw) / sqrt(wobs$w), 10)
})
colnames(WY) <- wtruth$gene
write_csv(wobs, "weights_obs.csv", signif_digits = 10)
write_csv(data.frame(obs = wobs$obs, WY, check.names = FALSE), "weights_Y.csv", signif_digits = 10)
write_csv(wtruth, "weights_truth.csv")

wobs <- read.csv("weights_obs.csv", colClasses = c("character", "character", "character",
                                                   "numeric", "integer", "numeric"))
wobs$g <- factor(wobs$g)
wobs$h <- factor(wobs$h)
WYr <- read.csv("weights_Y.csv", check.names = FALSE)
stopifnot(identical(WYr$obs, wobs$obs))
w_models <- list(crossed = "y ~ x + (1 | g) + (1 | h)", slope = "y ~ x + (1 + x | g)")
fits <- list()
for (gname in wtruth$gene) for (m in names(w_models)) for (reml in c(TRUE, FALSE)) {
  dat <- wobs
  dat$y <- WYr[[gname]]
  fits <- c(fits, fit_both(function(ctrl) lmer(as.formula(w_models[[m]]), data = dat, REML = reml,
                                               weights = w, control = ctrl),
                           "weights", m, gname))
}
write_out(case_json("weights",
                    paste("Simulated: 500 observations, crossed g (15) and h (6), covariate x,",
                          "weights w = n_cells / mean(n_cells); residual variance sigma^2 / w."),
                    list(obs = "weights_obs.csv", Y = "weights_Y.csv", truth = "weights_truth.csv"),
                    lapply(names(w_models), function(m) list(name = m, formula = w_models[[m]],
                                                             weights = "w")),
                    fits, list(seed = 20240303L)),
          "weights.json")

# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
summ <- do.call(rbind, summary_rows)
options(width = 200)
print(summ, digits = 10, row.names = FALSE)
cat(sprintf("\n%d fits; %d singular; %d not converged (default attempt); %d bobyqa retries; max |dense - lme4| = %.3g; objective - tight objective in [%.3g, %.3g]\n",
            nrow(summ), sum(summ$singular), sum(!summ$converged & summ$attempt == "default"),
            sum(summ$attempt == "bobyqa_retry"), max(abs(summ$dense_minus_lme4)),
            min(summ$minus_tight), max(summ$minus_tight)))
files <- c("sleepstudy.csv", "sleepstudy_terms.json", "slopes_obs.csv", "slopes_Y.csv",
           "slopes_truth.csv", "slopes.json", "kinship_obs.csv", "kinship_Y.csv", "kinship_K.csv",
           "kinship_truth.csv", "kinship.json", "weights_obs.csv", "weights_Y.csv",
           "weights_truth.csv", "weights.json")
stopifnot(all(file.exists(files)))
cat(sprintf("kinship: max |dense criterion from K - lme4| = %.3g\n",
            max(abs(summ$denseK_minus_lme4), na.rm = TRUE)))
print(data.frame(file = files, bytes = file.size(files)), row.names = FALSE)
cat(sprintf("total %d bytes\n", sum(file.size(c(files, "make_reference.R")))))
