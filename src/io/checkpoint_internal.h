// What the checkpoint writer needs of checkpoint_h5.cpp beyond the public checkpoint.h.
#pragma once

#include <functional>
#include <string>

#include "kiln/checkpoint.h"

namespace kiln {

// save_checkpoint with a hook that runs when the temporary file is complete and durable, just
// before the rename; a failure it returns fails the save there (see atomic_h5.h).
Status save_checkpoint(const std::string& path, const SavedModel& model, bool weights_only,
                       const TrainingState* state, const std::function<Status()>& before_rename);

}  // namespace kiln
