# meshserve R worker: serves predict() requests from the Python pool (runtimes/r/pool.py).
#
# Usage: Rscript worker.R [IN_FD [OUT_FD]]   (default 3 and 4)
#
# Requests arrive on IN_FD and answers leave on OUT_FD, never on stdout or stderr, so
# whatever model code prints cannot corrupt the protocol. Every message is a little-endian
# u32 length and then a body; runtimes/r/protocol.py documents the bodies.

options(warn = 1, keep.source = FALSE) # warnings reach stderr (the pool's log) at once

OP_PING <- 1L
OP_PREDICT <- 2L
ST_OK <- 0L
ST_R_ERROR <- 1L
ST_BAD_INPUT <- 2L
T_BOOL <- 1L
T_INT32 <- 2L
T_INT64 <- 3L
T_FP32 <- 4L
T_FP64 <- 5L
T_BYTES <- 6L

# ---- reading and writing the framing -------------------------------------------------

rd_ints <- function(rc, n) readBin(rc, "integer", n, size = 4L, endian = "little")

# One input tensor: u32 code, u32 ndim, ndim x u32 dims, u32 nbytes, then the data.
rd_tensor <- function(rc) {
  head <- rd_ints(rc, 2L)
  code <- head[1]
  rest <- rd_ints(rc, head[2] + 1L)
  shape <- rest[seq_len(head[2])]
  nbytes <- rest[head[2] + 1L]
  n <- as.integer(prod(shape))
  data <- if (code == T_FP64) {
    readBin(rc, "double", n, size = 8L, endian = "little")
  } else if (code == T_FP32) {
    readBin(rc, "double", n, size = 4L, endian = "little")
  } else if (code == T_INT32) {
    rd_ints(rc, n)
  } else if (code == T_BOOL) {
    readBin(rc, "raw", n) != as.raw(0L)
  } else if (code == T_BYTES) {
    rd_strings(readBin(rc, "raw", nbytes), n)
  } else {
    stop(sprintf("unknown tensor type code %d", code))
  }
  list(code = code, shape = shape, data = data)
}

# BYTES data: n x u32 lengths, then the bytes of every element back to back.
rd_strings <- function(block, n) {
  if (n == 0L) return(character())
  lens <- readBin(block[seq_len(4L * n)], "integer", n, size = 4L, endian = "little")
  ends <- 4L * n + cumsum(lens)
  out <- vapply(seq_len(n), function(i) {
    if (lens[i] == 0L) "" else rawToChar(block[(ends[i] - lens[i] + 1L):ends[i]])
  }, "")
  Encoding(out) <- "UTF-8"
  out
}

wr_u32 <- function(x) writeBin(as.integer(x), raw(), size = 4L, endian = "little")
wr_str <- function(s) {
  b <- charToRaw(enc2utf8(s))
  c(wr_u32(length(b)), b)
}

# The request header: tab-separated lines naming the model, its inputs and outputs. It is
# the same for every call to a model with the same inputs, so it is parsed once and kept.
headers <- new.env(hash = TRUE)

parse_header <- function(text) {
  hdr <- list(key = "", path = "", frame = "data.frame", type = "", packages = character(),
              names = character(), columns = character(), codes = integer(), outputs = list())
  for (fields in strsplit(strsplit(text, "\n", fixed = TRUE)[[1]], "\t", fixed = TRUE)) {
    value <- fields[-1]
    switch(fields[1],
      key = hdr$key <- value,
      path = hdr$path <- value,
      frame = hdr$frame <- value,
      type = hdr$type <- if (length(value)) value else "",
      packages = hdr$packages <- value,
      input = {
        hdr$names <- c(hdr$names, value[1])
        hdr$columns <- c(hdr$columns, if (length(value) > 1L && nzchar(value[2])) value[2] else value[1])
        hdr$codes <- c(hdr$codes, as.integer(value[3]))
      },
      output = hdr$outputs[[length(hdr$outputs) + 1L]] <- list(
        name = value[1], select = if (length(value) > 1L) value[2] else "", code = as.integer(value[3])
      )
    )
  }
  hdr$where <- ifelse(hdr$columns == hdr$names, sprintf("input '%s'", hdr$names),
                      sprintf("input '%s' (column '%s')", hdr$names, hdr$columns))
  hdr
}

get_header <- function(text) {
  hdr <- headers[[text]]
  if (is.null(hdr)) {
    if (length(headers) > 1000L) rm(list = ls(headers), envir = headers)
    hdr <- parse_header(text)
    assign(text, hdr, envir = headers)
  }
  hdr
}

# ---- errors: bad_input conditions become BAD_INPUT, every other error R_ERROR ---------

bad_input <- function(fmt, ...) {
  stop(structure(class = c("bad_input", "error", "condition"),
                 list(message = sprintf(fmt, ...), call = NULL)))
}

quoted <- function(x) paste0("'", x, "'", collapse = ", ")

# R errors from predict() that are really about the caller's data (an infinite value that
# compiled code refuses: "NA/NaN/Inf in foreign function call" from randomForest, say).
classify <- function(msg) {
  if (grepl("^object '.*' not found$", msg) || grepl("has new levels?", msg) ||
      grepl("NA/NaN/Inf in", msg, fixed = TRUE)) ST_BAD_INPUT else ST_R_ERROR
}

# ---- models: loaded lazily, kept per model key and file mtime ---------------------------

models <- new.env(hash = TRUE)

attach_packages <- function(packages) {
  for (p in packages) {
    ok <- suppressPackageStartupMessages(requireNamespace(p, quietly = TRUE))
    if (!ok) stop(sprintf("there is no R package '%s' (install the Debian package r-cran-%s)", p, tolower(p)))
    suppressPackageStartupMessages(library(p, character.only = TRUE))
  }
}

# predict() dispatches on S3 methods only once their namespace is loaded: load a package
# named like one of the model's classes (randomForest, ranger, glmnet, ...) when needed.
load_method_namespace <- function(model) {
  has_method <- function() any(vapply(class(model), function(cl) {
    !is.null(utils::getS3method("predict", cl, optional = TRUE))
  }, TRUE))
  if (has_method()) return(invisible())
  for (cl in class(model)) {
    if (nzchar(system.file(package = cl))) {
      suppressPackageStartupMessages(requireNamespace(cl, quietly = TRUE))
      if (has_method()) return(invisible())
    }
  }
}

MTIME_CHECK_S <- 1 # how often a kept model's file is checked for a newer version

# The model for a request: loaded on first use, kept per model key, reloaded when its file's
# mtime changes. Entries are environments so that their plans can be added in place.
get_model <- function(hdr) {
  now <- as.numeric(Sys.time())
  entry <- models[[hdr$key]]
  if (!is.null(entry) && identical(entry$path, hdr$path) && now - entry$checked < MTIME_CHECK_S) return(entry)
  stage <<- "load"
  if (!file.exists(hdr$path)) stop(sprintf("no such file '%s'", hdr$path), call. = FALSE)
  mtime <- as.numeric(file.mtime(hdr$path))
  if (!is.null(entry) && identical(entry$path, hdr$path) && identical(entry$mtime, mtime)) {
    entry$checked <- now
    return(entry)
  }
  entry <- load_model(hdr$path, hdr$packages)
  entry$mtime <- mtime
  entry$checked <- now
  assign(hdr$key, entry, envir = models)
  entry
}

load_model <- function(path, packages) {
  attach_packages(packages)
  entry <- new.env()
  entry$path <- path
  entry$plans <- new.env(hash = TRUE)
  if (grepl("\\.rds$", path, ignore.case = TRUE)) {
    model <- readRDS(path)
    load_method_namespace(model)
    entry$predict <- function(data, type) {
      if (nzchar(type)) stats::predict(model, data, type = type) else stats::predict(model, data)
    }
  } else {
    env <- new.env(parent = globalenv())
    sys.source(path, envir = env, keep.source = FALSE)
    for (fn in c("load", "predict")) {
      if (!exists(fn, envir = env, inherits = FALSE) || !is.function(env[[fn]])) {
        stop(sprintf("the script does not define a function %s()", fn), call. = FALSE)
      }
    }
    model <- env$load(dirname(path))
    entry$predict <- function(data, type) env$predict(model, data)
  }
  entry$schema <- model_schema(model)
  entry
}

# What a formula model expects of newdata: its variables, their classes, factor levels.
model_schema <- function(model) {
  tt <- tryCatch(stats::terms(model), error = function(e) NULL)
  if (is.null(tt) || !inherits(tt, "terms")) return(NULL)
  classes <- attr(tt, "dataClasses")
  vars <- all.vars(stats::delete.response(tt))
  levels <- if (is.list(model) && !is.null(model$xlevels)) {
    model$xlevels
  } else if (is.list(model) && is.list(model$forest) && !is.null(model$forest$xlevels)) {
    Filter(is.character, model$forest$xlevels)
  } else {
    list()
  }
  list(vars = vars, classes = classes, levels = levels)
}

# ---- inputs -> data.frame or matrix ------------------------------------------------------

CODE_TYPES <- c("logical (BOOL)", "integer", "integer", "numeric", "numeric", "character (BYTES)")

# Checks that depend only on the model and the header (column names and types), done once
# per header; what remains per request is NA, row counts and factor levels.
get_plan <- function(entry, hdr, text) {
  plan <- entry$plans[[text]]
  if (!is.null(plan)) return(plan)
  plan <- list(factors = list(), ordered = character())
  if (hdr$frame == "matrix") {
    kinds <- unique(CODE_TYPES[hdr$codes])
    if (length(kinds) > 1L) bad_input("a matrix model needs inputs of one type; got %s", paste(kinds, collapse = ", "))
  } else if (!is.null(schema <- entry$schema)) {
    missing <- setdiff(schema$vars, hdr$columns)
    if (length(missing)) {
      bad_input("the model needs column(s) %s, which no input provides (inputs give columns %s)",
                quoted(missing), quoted(hdr$columns))
    }
    for (v in intersect(schema$vars, names(schema$classes))) {
      want <- schema$classes[[v]]
      code <- hdr$codes[match(v, hdr$columns)]
      if (want == "numeric" && !code %in% c(T_INT32, T_FP32, T_FP64)) {
        bad_input("column '%s' must be numeric (FP64, FP32 or INT*), got %s", v, CODE_TYPES[code])
      } else if (want %in% c("factor", "ordered", "character") && code != T_BYTES) {
        bad_input("column '%s' must hold labels (BYTES), got %s", v, CODE_TYPES[code])
      } else if (want == "logical" && code != T_BOOL) {
        bad_input("column '%s' must be logical (BOOL), got %s", v, CODE_TYPES[code])
      }
      if (want %in% c("factor", "ordered") && !is.null(schema$levels[[v]])) {
        plan$factors[[v]] <- schema$levels[[v]]
        if (want == "ordered") plan$ordered <- c(plan$ordered, v)
      }
    }
  }
  assign(text, plan, envir = entry$plans)
  plan
}

read_inputs <- function(rc, hdr) {
  lapply(seq_along(hdr$names), function(i) {
    t <- rd_tensor(rc)
    if (anyNA(t$data)) {
      bad_input("%s has NA/NaN at element %d; the model takes no missing values", hdr$where[i], which(is.na(t$data))[1])
    }
    t
  })
}

build_frame <- function(inputs, hdr, plan) {
  if (length(inputs) == 0L) bad_input("the request has no inputs")
  rows <- vapply(inputs, function(t) {
    s <- t$shape
    if (length(s) > 2L || (length(s) == 2L && s[2] != 1L)) {
      bad_input("input has shape [%s]; a data.frame column takes shape [-1] or [-1, 1]", paste(s, collapse = ", "))
    }
    if (length(s) == 0L) 1L else s[1]
  }, 1L)
  if (any(rows != rows[1])) {
    bad_input("inputs have different row counts: %s", paste(sprintf("%s=%d", hdr$names, rows), collapse = ", "))
  }
  df <- structure(lapply(inputs, `[[`, "data"), names = hdr$columns, class = "data.frame",
                  row.names = if (rows[1] > 0L) c(NA_integer_, -rows[1]) else integer())
  for (v in names(plan$factors)) {
    known <- plan$factors[[v]]
    col <- df[[v]]
    if (!all(col %in% known)) {
      unseen <- setdiff(unique(col), known)
      bad_input("column '%s' has level(s) %s the model never saw; known levels: %s",
                v, quoted(utils::head(unseen, 5L)), quoted(known))
    }
    df[[v]] <- factor(col, levels = known, ordered = v %in% plan$ordered)
  }
  df
}

build_matrix <- function(inputs, hdr) {
  if (length(inputs) == 1L && length(inputs[[1]]$shape) == 2L) {
    s <- inputs[[1]]$shape
    return(matrix(inputs[[1]]$data, nrow = s[1], ncol = s[2], byrow = TRUE))
  }
  values <- lapply(inputs, `[[`, "data")
  lens <- lengths(values)
  if (any(lens != lens[1])) {
    bad_input("inputs have different lengths: %s", paste(sprintf("%s=%d", hdr$names, lens), collapse = ", "))
  }
  m <- do.call(cbind, values)
  colnames(m) <- hdr$columns
  m
}

# ---- outputs ------------------------------------------------------------------------------

select_output <- function(res, out, n_out) {
  key <- if (nzchar(out$select)) out$select else out$name
  whole <- !nzchar(out$select) && n_out == 1L
  if (is.list(res)) { # a data.frame or a list
    if (key %in% names(res)) return(res[[key]])
    if (whole && is.data.frame(res) && ncol(res) == 1L) return(res[[1L]])
    stop(sprintf("predict() returned a %s without '%s'; it has %s", class(res)[1], key, quoted(names(res))))
  }
  if (whole) return(res)
  if (is.matrix(res) && key %in% colnames(res)) return(res[, key])
  stop(sprintf("cannot find output '%s' in predict()'s result (a %s); name its column in r.outputs",
               key, class(res)[1]))
}

encode_output <- function(name, value, want) {
  if (is.factor(value)) {
    if (want == T_BYTES) {
      value <- as.character(value)
    } else if (want %in% c(T_INT32, T_INT64)) {
      value <- as.integer(value) # the level codes, when the manifest asks for an integer output
    } else {
      stop(sprintf("output '%s' is a factor: declare it BYTES (its labels) or an integer type (its codes)", name))
    }
  }
  dims <- dim(value)
  if (is.null(dims)) dims <- length(value)
  if (length(dims) > 1L) value <- aperm(value) # R is column-major; the wire is row-major
  if (!is.atomic(value)) {
    stop(sprintf("output '%s' is a %s, not a vector, matrix or factor", name, class(value)[1]))
  }
  if (!is.double(value) && anyNA(value)) {
    stop(sprintf("output '%s' has NA at element %d", name, which(is.na(value))[1]))
  }
  if (is.character(value)) {
    code <- T_BYTES
    data <- unlist(lapply(value, wr_str), use.names = FALSE)
    if (is.null(data)) data <- raw()
  } else if (is.logical(value)) {
    code <- T_BOOL
    data <- as.raw(value)
  } else if (is.integer(value)) {
    code <- T_INT32
    data <- writeBin(as.vector(value), raw(), size = 4L, endian = "little")
  } else if (is.double(value)) {
    code <- T_FP64
    data <- writeBin(as.vector(value), raw(), size = 8L, endian = "little")
  } else {
    stop(sprintf("output '%s' has R type %s, which has no tensor datatype", name, typeof(value)))
  }
  c(wr_str(name), as.raw(code), wr_u32(c(length(dims), dims, length(data))), data)
}

# ---- requests -------------------------------------------------------------------------------

stage <- "read" # what the worker was doing, for error messages

failure <- function(status, msg) c(as.raw(status), wr_str(msg))

predict_request <- function(rc, text) {
  hdr <- get_header(text)
  entry <- get_model(hdr)
  stage <<- "prepare"
  plan <- get_plan(entry, hdr, text)
  inputs <- read_inputs(rc, hdr)
  data <- if (hdr$frame == "matrix") build_matrix(inputs, hdr) else build_frame(inputs, hdr, plan)
  stage <<- "predict"
  t0 <- Sys.time()
  res <- entry$predict(data, hdr$type)
  nanos <- (as.numeric(Sys.time()) - as.numeric(t0)) * 1e9
  stage <<- "outputs"
  n_out <- length(hdr$outputs)
  parts <- lapply(hdr$outputs, function(o) encode_output(o$name, select_output(res, o, n_out), o$code))
  c(as.raw(ST_OK), writeBin(round(nanos), raw(), size = 8L, endian = "little"), wr_u32(n_out),
    unlist(parts, use.names = FALSE))
}

on_error <- function(e, text) {
  msg <- conditionMessage(e)
  if (stage == "load") {
    hdr <- get_header(text)
    return(failure(ST_R_ERROR, sprintf("cannot load model '%s' from %s: %s", hdr$key, hdr$path, msg)))
  }
  if (stage == "predict") return(failure(classify(msg), sprintf("predict() failed: %s", msg)))
  failure(ST_R_ERROR, msg)
}

handle <- function(body) {
  stage <<- "read"
  rc <- rawConnection(body, "rb")
  on.exit(close(rc))
  text <- ""
  tryCatch({
    op <- rd_ints(rc, 2L)
    if (op[1] == OP_PING) {
      c(as.raw(ST_OK), wr_str(sprintf("pid=%d %s", Sys.getpid(), R.version.string)))
    } else if (op[1] == OP_PREDICT) {
      text <- rawToChar(readBin(rc, "raw", op[2]))
      Encoding(text) <- "UTF-8"
      predict_request(rc, text)
    } else {
      failure(ST_BAD_INPUT, sprintf("unknown request op %d", op[1]))
    }
  },
  bad_input = function(e) failure(ST_BAD_INPUT, conditionMessage(e)),
  error = function(e) on_error(e, text))
}

main <- function(args) {
  in_fd <- if (length(args) >= 1L) args[[1]] else "3"
  out_fd <- if (length(args) >= 2L) args[[2]] else "4"
  con_in <- file(paste0("/dev/fd/", in_fd), "rb", raw = TRUE)
  con_out <- file(paste0("/dev/fd/", out_fd), "wb", raw = TRUE)
  repeat {
    n <- readBin(con_in, "integer", 1L, size = 4L, endian = "little")
    if (length(n) == 0L) break # the pool closed the pipe: exit quietly
    body <- readBin(con_in, "raw", n)
    if (length(body) < n) break
    answer <- handle(body)
    writeBin(length(answer), con_out, size = 4L, endian = "little")
    writeBin(answer, con_out)
    flush(con_out)
  }
  invisible()
}

main(commandArgs(trailingOnly = TRUE))
