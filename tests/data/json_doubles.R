# JSON helpers shared by the reference generators (lme4_terms/, lme4_profile/), sourced
# from their folders as source("../json_doubles.R").
#
# Doubles are written in the shortest of %.15g / %.16g / %.17g that reads back as the same
# double (jsonlite's digits = NA stops at 15 significant digits), as preformatted "json"
# strings for write_json(..., json_verbatim = TRUE); non-finite numbers and NA are null.

fmt <- function(x) {
  x <- as.numeric(x)
  out <- sprintf("%.15g", x)
  for (d in 16:17) {
    bad <- is.finite(x) & suppressWarnings(as.numeric(out)) != x
    bad[is.na(bad)] <- FALSE
    out[bad] <- sprintf(paste0("%.", d, "g"), x[bad])
  }
  out[!is.finite(x)] <- "null"
  out
}
jnum <- function(x) structure(fmt(x), class = "json")                  # scalar
jarr <- function(x) structure(paste0("[", paste(fmt(x), collapse = ","), "]"), class = "json")
jmat <- function(m) {                                                   # row-major [[..],..]
  m <- as.matrix(m)
  rows <- vapply(seq_len(nrow(m)), function(i) paste0("[", paste(fmt(m[i, ]), collapse = ","), "]"), "")
  structure(paste0("[", paste(rows, collapse = ","), "]"), class = "json")
}
jobj <- function(v) {                                                   # named numeric -> {}
  out <- lapply(seq_along(v), function(i) jnum(v[[i]]))
  names(out) <- names(v)
  out
}
