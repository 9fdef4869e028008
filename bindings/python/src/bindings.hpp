// Internal to the Python module: helpers shared by the per-area binding files (one file per library area).
#pragma once

#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/secret.hpp>

#include <pybind11/pybind11.h>

#include <atomic>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace luksforge::python {

namespace py = pybind11;

// What Python sees as luksforge.Secret: a SecretBuffer that can be wiped early (wipe(), `with`) and that
// exports its bytes through the buffer protocol. wipe() zeroes in place and keeps the allocation until the
// object dies, so a memoryview taken earlier never points at freed memory (it just sees zeros).
struct Secret {
    SecretBuffer buffer;
    std::size_t length = 0;  // logical length: 0 after wipe()

    Secret() = default;
    explicit Secret(SecretBuffer b) : buffer(std::move(b)), length(buffer.size()) {}
    void wipe() noexcept;
    std::string_view view() const noexcept { return {buffer.chars(), length}; }
    std::span<const std::uint8_t> bytes() const noexcept { return {buffer.data(), length}; }
};

// Copy a bytes-like argument (bytes, bytearray, memoryview, luksforge.Secret, any C-contiguous buffer) into a
// SecretBuffer. `str` is refused: Python strings are immutable and cannot be wiped. Needs the GIL.
SecretBuffer secret_from(py::handle object, const char* argument);
// The same for an optional argument (None → empty optional).
std::optional<SecretBuffer> optional_secret_from(py::handle object, const char* argument);
// One bytes-like object or an iterable of them.
std::vector<SecretBuffer> secrets_from(py::handle object, const char* argument);

// JSON arguments may be a str (taken verbatim) or any object json.dumps accepts (dict, list, ...).
std::string json_text(py::handle object, const char* argument);
py::object json_loads(std::string_view text);

// Runs a Python progress callback from C++ work that released the GIL. Each call re-acquires the GIL; an
// exception raised by the callback (or a pending KeyboardInterrupt) is caught before it can cross C frames,
// recorded, and turned into a "stop" answer; rethrow_if_failed() re-raises it once the C++ call has returned.
class CallbackRelay {
public:
    explicit CallbackRelay(py::object callback) : callback_(std::move(callback)) {}
    ~CallbackRelay() = default;  // constructed and destroyed with the GIL held
    CallbackRelay(const CallbackRelay&) = delete;
    CallbackRelay& operator=(const CallbackRelay&) = delete;

    bool active() const noexcept { return !callback_.is_none(); }
    bool failed() const noexcept { return static_cast<bool>(error_); }
    // Call with the GIL released. Returns false when the work should stop (callback returned False or raised).
    template <typename... Args>
    bool operator()(Args&&... args) noexcept {
        if (error_) return false;
        try {
            py::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            if (callback_.is_none()) return true;
            py::object answer = callback_(std::forward<Args>(args)...);
            return answer.is_none() || answer.cast<bool>();
        } catch (...) {
            error_ = std::current_exception();
            return false;
        }
    }
    // For callbacks that only observe (steps, per-instance notices): call with the GIL released; when the
    // callback raises, throw CallbackAborted so the C++ operation unwinds (its own cleanup runs) and the Python
    // exception is re-raised by rethrow_if_failed().
    template <typename... Args>
    void notify(Args&&... args) {
        if (!(*this)(std::forward<Args>(args)...) && error_) throw CallbackAborted();
    }
    // Needs the GIL.
    void rethrow_if_failed();

    struct CallbackAborted : std::exception {
        const char* what() const noexcept override { return "aborted by a Python callback"; }
    };

private:
    py::object callback_;
    std::exception_ptr error_;
};

// A Volume shared between the Python object and any call in flight: close() waits for running work (which
// holds `mutex`) and then destroys the Volume, releasing its device lock at once.
struct VolumeState {
    std::mutex mutex;
    std::optional<Volume> volume;
    std::filesystem::path path;
    // Read without `mutex` (and with the GIL held) so asking never waits for work in flight.
    std::atomic<bool> closed{false};
    // The thread running work on the volume: a callback of that work (rekey progress) calling back into the
    // same Volume would otherwise wait for itself forever.
    std::atomic<std::thread::id> owner{};
};

struct PyVolume {
    std::shared_ptr<VolumeState> state;

    struct Owner {
        VolumeState& s;
        explicit Owner(VolumeState& state) : s(state) { s.owner = std::this_thread::get_id(); }
        ~Owner() { s.owner = std::thread::id{}; }
    };
    static void refuse_reentry(const VolumeState& s) {
        if (s.owner.load() == std::this_thread::get_id())
            throw py::value_error("this luksforge.Volume is busy: it cannot be used from its own callback");
    }

    explicit PyVolume(Volume v) : state(std::make_shared<VolumeState>()) {
        state->path = v.path();
        state->volume.emplace(std::move(v));
    }

    // Run `work` on the Volume with the GIL released. The result must be a plain C++ value (no Python objects).
    template <typename Work>
    auto run(Work&& work) {
        std::shared_ptr<VolumeState> keep = state;
        refuse_reentry(*keep);
        py::gil_scoped_release release;
        std::lock_guard lock(keep->mutex);
        Owner owner(*keep);
        if (!keep->volume) throw py::value_error("operation on a closed luksforge.Volume");
        return work(*keep->volume);
    }

    void close() {
        std::shared_ptr<VolumeState> keep = state;
        refuse_reentry(*keep);
        py::gil_scoped_release release;
        std::lock_guard lock(keep->mutex);
        keep->volume.reset();
        keep->closed = true;
    }

    bool closed() const { return state->closed; }
};

// PinOptions from the keyword arguments every network-facing function takes.
inline PinOptions pin_options(bool trust_on_first_use, const NetworkOptions* network) {
    PinOptions options;
    options.trust_on_first_use = trust_on_first_use;
    if (network) options.network = *network;
    return options;
}

// Area registration, one per source file.
void register_errors(py::module_& m);
void register_secrets(py::module_& m);
void register_luks(py::module_& m);
void register_pins(py::module_& m);
void register_tang(py::module_& m);
void register_clevis(py::module_& m);
void register_policy(py::module_& m);
void register_image(py::module_& m);
void register_ledger(py::module_& m);
void register_pipeline(py::module_& m);

}  // namespace luksforge::python
