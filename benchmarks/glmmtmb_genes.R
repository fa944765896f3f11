# glmmTMB per gene, timed: the peer of benchmarks/count_speed.py.
#   Rscript glmmtmb_genes.R counts.csv obs.csv "(1|patient) + (1|chemistry)" nbinom2 out.csv
# counts.csv: observations x genes (header: gene names); obs.csv: the covariates and `offset`.
# Writes per gene: seconds (elapsed, the fit alone), logLik, the NB size and convergence.
suppressMessages(library(glmmTMB))
args <- commandArgs(trailingOnly = TRUE)
counts <- read.csv(args[1], check.names = FALSE)
obs <- read.csv(args[2], stringsAsFactors = TRUE)
for (col in names(obs)) if (is.character(obs[[col]])) obs[[col]] <- factor(obs[[col]])
family <- if (args[4] == "poisson") poisson else nbinom2
form <- as.formula(paste("y ~", args[3], "+ offset(offset)"))
rows <- lapply(names(counts), function(g) {
  data <- obs
  data$y <- counts[[g]]
  fit <- NULL
  secs <- system.time(fit <- tryCatch(glmmTMB(form, family = family, data = data),
                                      error = function(e) NULL))[["elapsed"]]
  if (is.null(fit)) return(data.frame(gene = g, seconds = secs, logLik = NA, size = NA, converged = FALSE))
  data.frame(gene = g, seconds = secs, logLik = as.numeric(logLik(fit)),
             size = if (args[4] == "poisson") NA else sigma(fit),
             converged = isTRUE(fit$fit$convergence == 0) && isTRUE(fit$sdr$pdHess))
})
write.csv(do.call(rbind, rows), args[5], row.names = FALSE)
