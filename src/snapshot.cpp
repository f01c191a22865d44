#include "kiln/snapshot.h"

#include <cstdio>
#include <utility>

#include "kiln/backend.h"
#include "kiln/model.h"
#include "kiln/status.h"

namespace kiln {

int SnapshotService::acquire(const std::string& name) {
    for (size_t i = 0; i < slots_.size(); ++i) {
        if (slots_[i].users > 0 && slots_[i].name == name) {
            ++slots_[i].users;
            return static_cast<int>(i);
        }
    }
    Backend& b = model_.backend();  // throws when the model is not compiled
    const View p = model_.parameters(), q = model_.nontrainable_parameters();
    Slot slot;
    slot.name = name;
    slot.users = 1;
    slot.trainable = Tensor(b, p.shape, p.dtype);
    slot.nontrainable = Tensor(b, q.shape, q.dtype);
    // Reuse a released entry so that ids stay small over many fits.
    int id = -1;
    for (size_t i = 0; i < slots_.size() && id < 0; ++i) {
        if (slots_[i].users == 0)
            id = static_cast<int>(i);
    }
    if (id < 0) {
        slots_.push_back(Slot());
        id = static_cast<int>(slots_.size() - 1);
    }
    slots_[size_t(id)] = std::move(slot);
    // A resumed run's snapshot of this name comes back into the new slot.
    for (auto it = stashed_.begin(); it != stashed_.end(); ++it) {
        if (it->name != name)
            continue;
        Slot& s = slots_[size_t(id)];
        if (it->trainable.size() != size_t(s.trainable.elements()) ||
            it->nontrainable.size() != size_t(s.nontrainable.elements())) {
            std::fprintf(stderr,
                         "kiln: warning: the checkpoint's snapshot '%s' does not fit this "
                         "model; it is not restored\n",
                         name.c_str());
        } else {
            put(s.trainable.view(), it->trainable);
            put(s.nontrainable.view(), it->nontrainable);
            s.taken = true;
            s.taken_at = it->taken_at;
        }
        stashed_.erase(it);
        break;
    }
    return id;
}

void SnapshotService::put(const View& dst, const std::vector<float>& values) {
    if (values.empty())
        return;
    Backend& b = model_.backend();
    if (dst.dtype == DType::kFloat32) {
        b.upload(dst.data, values.data(), values.size() * sizeof(float));
    } else {
        std::vector<double> wide(values.begin(), values.end());
        b.upload(dst.data, wide.data(), wide.size() * sizeof(double));
    }
}

void SnapshotService::stash(std::vector<SavedSnapshot> snapshots) {
    stashed_ = std::move(snapshots);
}

std::vector<int> SnapshotService::taken_slots() const {
    std::vector<int> out;
    for (size_t i = 0; i < slots_.size(); ++i) {
        if (slots_[i].users > 0 && slots_[i].taken)
            out.push_back(static_cast<int>(i));
    }
    return out;
}

const std::string& SnapshotService::name(int slot) const {
    return get(slot, "name").name;
}

void SnapshotService::release(int slot) {
    Slot& s = get(slot, "release");
    if (--s.users == 0)
        s = Slot();
}

void SnapshotService::release_all() noexcept {
    slots_.clear();
    stashed_.clear();
}

void SnapshotService::take(int slot) {
    Slot& s = get(slot, "take");
    const View p = model_.parameters(), q = model_.nontrainable_parameters();
    if (p.bytes() != s.trainable.bytes() || q.bytes() != s.nontrainable.bytes()) {
        throw Error("snapshot '" + s.name +
                    "': the model's weights changed size since the slot "
                    "was allocated (compiled again?)");
    }
    Backend& b = model_.backend();
    b.copy(s.trainable.data(), p.data, p.bytes());
    b.copy(s.nontrainable.data(), q.data, q.bytes());
    s.taken = true;
    s.taken_at = model_.iterations();
}

void SnapshotService::restore(int slot) {
    Slot& s = get(slot, "restore");
    if (!s.taken)
        throw Error("snapshot '" + s.name + "': restore before any take");
    const View p = model_.parameters(), q = model_.nontrainable_parameters();
    Backend& b = model_.backend();
    b.copy(p.data, s.trainable.data(), p.bytes());
    b.copy(q.data, s.nontrainable.data(), q.bytes());
}

bool SnapshotService::taken(int slot) const {
    return get(slot, "taken").taken;
}
int64_t SnapshotService::taken_at(int slot) const {
    return get(slot, "taken_at").taken_at;
}
View SnapshotService::trainable(int slot) const {
    return get(slot, "trainable").trainable.view();
}
View SnapshotService::nontrainable(int slot) const {
    return get(slot, "nontrainable").nontrainable.view();
}

int SnapshotService::slots_in_use() const {
    int n = 0;
    for (const Slot& s : slots_)
        n += s.users > 0 ? 1 : 0;
    return n;
}

size_t SnapshotService::bytes() const {
    size_t n = 0;
    for (const Slot& s : slots_)
        n += s.trainable.bytes() + s.nontrainable.bytes();
    return n;
}

SnapshotService::Slot& SnapshotService::get(int slot, const char* what) {
    return const_cast<Slot&>(static_cast<const SnapshotService*>(this)->get(slot, what));
}

const SnapshotService::Slot& SnapshotService::get(int slot, const char* what) const {
    if (slot < 0 || slot >= static_cast<int>(slots_.size()) || slots_[size_t(slot)].users == 0) {
        throw Error(std::string("snapshot ") + what + ": no slot " + std::to_string(slot) +
                    " in use");
    }
    return slots_[size_t(slot)];
}

}  // namespace kiln
