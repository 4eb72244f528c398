# Build the R runtime's example models into a model repository (idempotent).
#
#   Rscript scripts/build_r_examples.R OUT_DIR
#
# mtcars     lm(mpg ~ wt + hp) on R's mtcars, saved with saveRDS        (.rds model)
# iris-rf    randomForest(Species ~ ., iris, ntree = 50), seed 42       (.rds model, factor output)
# mtcars-am  glm(am ~ wt + hp, binomial) behind an R script that defines
#            load() and predict()                                        (script model, two outputs)
#
# Needs only Debian packages: r-base-core and r-cran-randomforest. A file is rewritten only
# when its content changes, so a second run leaves mtimes (and loaded workers) alone.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1L) {
  message("usage: Rscript scripts/build_r_examples.R OUT_DIR")
  quit(status = 2L)
}
out <- args[[1]]

write_if_changed <- function(path, write) {
  dir.create(dirname(path), recursive = TRUE, showWarnings = FALSE)
  tmp <- tempfile(tmpdir = dirname(path))
  write(tmp)
  same <- file.exists(path) && identical(unname(tools::md5sum(tmp)), unname(tools::md5sum(path)))
  if (same) unlink(tmp) else file.rename(tmp, path)
  message(if (same) "unchanged " else "wrote     ", path)
}

save_rds <- function(object, path) write_if_changed(path, function(tmp) saveRDS(object, tmp))
save_text <- function(lines, path) write_if_changed(path, function(tmp) writeLines(lines, tmp))

tensor <- function(name, datatype) sprintf("  - {name: %s, datatype: %s, shape: [-1]}", name, datatype)

manifest <- function(comment, artifact, inputs, outputs, r) {
  c(paste("#", comment), "runtime: r", "framework: r", paste("artifact:", artifact),
    "inputs:", inputs, "outputs:", outputs, "r:", paste0("  ", r))
}

# mtcars: inputs wt and hp, output mpg.
dir <- file.path(out, "mtcars", "1")
save_rds(lm(mpg ~ wt + hp, data = mtcars), file.path(dir, "model.rds"))
save_text(manifest("Fuel economy from weight and horsepower: lm(mpg ~ wt + hp) on R's mtcars.",
                   "model.rds", c(tensor("wt", "FP64"), tensor("hp", "FP64")), tensor("mpg", "FP64"),
                   "as: data.frame"),
          file.path(dir, "manifest.yaml"))

# iris-rf: a randomForest classifier; the predicted factor comes back as its labels.
suppressPackageStartupMessages(library(randomForest))
set.seed(42)
dir <- file.path(out, "iris-rf", "1")
save_rds(randomForest(Species ~ ., data = iris, ntree = 50), file.path(dir, "model.rds"))
columns <- c(sepal_length = "Sepal.Length", sepal_width = "Sepal.Width",
             petal_length = "Petal.Length", petal_width = "Petal.Width")
save_text(manifest("Iris species from a randomForest (ntree 50, seed 42); output: the label.",
                   "model.rds", tensor(names(columns), "FP64"), tensor("species", "BYTES"),
                   c("as: data.frame", "packages: [randomForest]", "columns:",
                     sprintf("  %s: %s", names(columns), columns))),
          file.path(dir, "manifest.yaml"))

# mtcars-am: an R script model; load(dir) gets the version folder, predict() returns a data.frame
# whose columns are the outputs.
dir <- file.path(out, "mtcars-am", "1")
save_rds(glm(am ~ wt + hp, family = binomial, data = mtcars), file.path(dir, "fit.rds"))
save_text(c(
  "# Probability that a car has a manual gearbox, from a logistic regression saved beside this file.",
  "load <- function(dir) readRDS(file.path(dir, \"fit.rds\"))",
  "predict <- function(model, data) {",
  "  p <- stats::predict(model, newdata = data, type = \"response\")",
  "  data.frame(probability = unname(p), manual = unname(p > 0.5))",
  "}"
), file.path(dir, "model.R"))
save_text(manifest("Manual gearbox from weight and horsepower: a glm behind an R script (load/predict).",
                   "model.R", c(tensor("wt", "FP64"), tensor("hp", "FP64")),
                   c(tensor("probability", "FP64"), tensor("manual", "BOOL")), "as: data.frame"),
          file.path(dir, "manifest.yaml"))

# sentiment-glm: the R step of the example pipeline. A logistic regression of "the text is
# positive" on its counts of positive and negative words, fitted on simulated reviews
# (seed 7), so the example needs no data set from outside.
set.seed(7)
reviews <- data.frame(pos = rpois(400, 2), neg = rpois(400, 2))
reviews$positive <- rbinom(400, 1, plogis(1.5 * (reviews$pos - reviews$neg)))
dir <- file.path(out, "sentiment-glm", "1")
save_rds(glm(positive ~ pos + neg, family = binomial, data = reviews), file.path(dir, "model.rds"))
save_text(manifest("Probability that a text is positive, from its positive and negative word counts (glm).",
                   "model.rds", c(tensor("pos", "FP64"), tensor("neg", "FP64")), tensor("prob", "FP64"),
                   c("as: data.frame", "type: response")),
          file.path(dir, "manifest.yaml"))
