// Entry into libFuzzer for the fuzz targets (see FuzzDriver.c).
#pragma once
#include <stddef.h>
#include <stdint.h>

/// Runs libFuzzer's driver (corpus, mutation, -max_total_time ...) on the target's
/// LLVMFuzzerTestOneInput; returns the process exit status.
int mesh_fuzz_main(int argc, char **argv);
