// Snapshots of a model's weights kept on its device: EarlyStopping's best weights, taken and
// restored without a trip through host memory.
//
// A slot holds one copy of the model's two flat weight buffers (the trainable parameters and the
// non-trainable ones, Sequential::parameters() and nontrainable_parameters()). It is allocated
// on the model's backend when first acquired and reused after that; `take` and `restore` are one
// stream-ordered device-to-device copy per buffer, so neither makes training wait and neither
// counts as a device read. Callbacks that want the same snapshot (the best weights under the
// same rule) acquire the same name and share one slot.
//
//     const int slot = model.snapshots().acquire("best");
//     model.snapshots().take(slot);     // the weights as they are now
//     ...
//     model.snapshots().restore(slot);  // back to them
//     model.snapshots().release(slot);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/checkpoint.h"
#include "kiln/tensor.h"

namespace kiln {

class Sequential;

class SnapshotService {
  public:
    explicit SnapshotService(const Sequential& model) : model_(model) {}
    ~SnapshotService() { release_all(); }
    SnapshotService(const SnapshotService&) = delete;
    SnapshotService& operator=(const SnapshotService&) = delete;

    // The slot registered under `name`, allocated (sized for the compiled model) on the first
    // acquire; each acquire counts one user. Throws kiln::Error when the model is not compiled.
    int acquire(const std::string& name);
    // One user fewer; the slot's device memory goes with its last user.
    void release(int slot);
    // Frees every slot (the model does this before its backend or its buffers go).
    void release_all() noexcept;

    // Copies the live weights into the slot (every time: weights can change without an
    // optimizer step, through set_weights or a restore).
    void take(int slot);
    // Copies the slot back into the live weights. Throws kiln::Error when nothing was taken.
    void restore(int slot);

    bool taken(int slot) const;
    // Optimizer steps (Sequential::iterations) when the slot was last taken.
    int64_t taken_at(int slot) const;
    // The slot's copies of the two buffers, for a checkpoint written from the slot.
    View trainable(int slot) const;
    View nontrainable(int slot) const;

    int slots_in_use() const;
    // The slots in use that hold a snapshot, and a slot's name.
    std::vector<int> taken_slots() const;
    const std::string& name(int slot) const;
    // Snapshots read from a checkpoint being resumed (TrainingState::snapshots): the next
    // acquire of each name gets a slot that holds it, taken at its step. A snapshot that does
    // not fit the model is dropped with a warning. Replaces what an earlier call kept.
    void stash(std::vector<SavedSnapshot> snapshots);
    // Device bytes held by all slots.
    size_t bytes() const;

  private:
    struct Slot {
        std::string name;
        int users = 0;
        bool taken = false;
        int64_t taken_at = -1;
        Tensor trainable, nontrainable;
    };
    Slot& get(int slot, const char* what);
    void put(const View& dst, const std::vector<float>& values);
    const Slot& get(int slot, const char* what) const;

    const Sequential& model_;
    std::vector<Slot> slots_;
    std::vector<SavedSnapshot>
        stashed_;  // released slots stay as empty entries, so ids remain valid
};

}  // namespace kiln
