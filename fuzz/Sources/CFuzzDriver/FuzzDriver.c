// SwiftPM links an executable with `main` renamed to `<Target>_main` (so that tests can link
// executable modules); the fuzz targets define that symbol as a call to mesh_fuzz_main, which
// hands control to libFuzzer's driver. Without the renaming, libFuzzer's own main is linked and
// this is unused. Either way the fuzzer runs the target's LLVMFuzzerTestOneInput.
#include "CFuzzDriver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

int mesh_fuzz_main(int argc, char **argv) {
    return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput);
}
