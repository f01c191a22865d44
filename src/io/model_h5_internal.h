// The Keras legacy full-model layout (model_h5.cpp) written into and read from a file that is
// already open, so the checkpoint files (checkpoint_h5.cpp) can add their `kiln` group to the
// same file and verify it in the same open.
#pragma once

#include <hdf5.h>

#include <string>
#include <vector>

#include "kiln/model_config.h"
#include "kiln/status.h"

namespace kiln {

// One weight dataset write_model_h5 wrote: its absolute path in the file and its values.
struct WrittenWeight {
    std::string path;  // "/model_weights/dense/dense/kernel:0"
    const NamedArray* array;
};

// The checks save_model_h5 makes before it touches the disk.
Status check_model_h5(const SavedModel& model);
// Writes the whole legacy layout into `file` (`path` is for messages). Appends every weight
// dataset written to *written when given.
Status write_model_h5(hid_t file, const std::string& path, const SavedModel& model,
                      std::vector<WrittenWeight>* written);
// Reads the legacy layout from `file`, as load_model_h5 does. The caller holds an HDF5Session.
Status read_model_h5(hid_t file, const std::string& path, SavedModel* out);

}  // namespace kiln
