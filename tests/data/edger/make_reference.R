# edgeR's and limma's values on counts.csv, for tests/test_pseudobulk.py.
# Run: Rscript tests/data/edger/make_reference.R  (Debian: r-bioc-edger, r-cran-jsonlite)
# counts.csv: 14 samples x 400 genes of negative binomial counts (numpy seed 11), a group column.
suppressMessages({library(edgeR); library(jsonlite)})
here <- dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE)))
d <- read.csv(file.path(here, "counts.csv"), row.names = 1, check.names = FALSE)
group <- d$group
y <- t(as.matrix(d[, setdiff(colnames(d), "group")]))  # genes x samples, as edgeR wants
out <- list(
  edger = as.character(packageVersion("edgeR")),
  limma = as.character(packageVersion("limma")),
  keep_default = unname(filterByExpr(y)),
  keep_group = unname(filterByExpr(y, group = group)),
  keep_min5 = unname(filterByExpr(y, min.count = 5, min.total.count = 10, large.n = 4, min.prop = 0.4)),
  voom_E = unname(t(voom(y)$E))  # samples x genes
)
writeLines(toJSON(out, digits = NA, matrix = "rowmajor"), file.path(here, "reference.json"))
