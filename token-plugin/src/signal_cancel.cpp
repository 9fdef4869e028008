// SIGINT/SIGTERM cancellation of the handler's Tang requests (signal_cancel.hpp).
#include "signal_cancel.hpp"

#include <signal.h>

#include <cerrno>
#include <mutex>

namespace luksforge::token {
namespace {

static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "the flags are written from a signal handler");

constexpr int kSignals[] = {SIGINT, SIGTERM};
constexpr int kCount = sizeof kSignals / sizeof kSignals[0];

std::atomic<bool> g_cancelled{false};
std::atomic<int> g_signal{0};
// The host's actions, as found when ours went in; the handler only reads them. Written under g_mutex before
// ours is installed, and never while ours is installed.
struct sigaction g_previous[kCount];
bool g_installed[kCount] = {};
std::mutex g_mutex;
int g_users = 0;

int slot_of(int sig) noexcept {
    for (int i = 0; i < kCount; ++i)
        if (kSignals[i] == sig) return i;
    return -1;
}

// Async-signal-safe: atomics, errno, and a call of the host's handler (the kernel would have called it).
extern "C" void on_cancel_signal(int sig, siginfo_t* info, void* context) {
    const int saved_errno = errno;
    g_signal.store(sig);
    g_cancelled.store(true);
    const int slot = slot_of(sig);
    if (slot >= 0) {
        const struct sigaction& previous = g_previous[slot];
        if ((previous.sa_flags & SA_SIGINFO) != 0) {
            if (previous.sa_sigaction != nullptr && previous.sa_sigaction != &on_cancel_signal)
                previous.sa_sigaction(sig, info, context);
        } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN &&
                   previous.sa_handler != nullptr) {
            previous.sa_handler(sig);
        }
    }
    errno = saved_errno;
}

bool is_ours(const struct sigaction& action) noexcept {
    return (action.sa_flags & SA_SIGINFO) != 0 && action.sa_sigaction == &on_cancel_signal;
}

bool host_handler(const struct sigaction& action) noexcept {
    if ((action.sa_flags & SA_SIGINFO) != 0) return action.sa_sigaction != nullptr;
    return action.sa_handler != SIG_DFL && action.sa_handler != SIG_IGN;
}

void install() noexcept {
    g_cancelled.store(false);
    g_signal.store(0);
    for (int i = 0; i < kCount; ++i) {
        g_installed[i] = false;
        // Read into a local first: g_previous must never hold our own action (the handler would call itself).
        struct sigaction current = {};
        if (::sigaction(kSignals[i], nullptr, &current) != 0 || is_ours(current) || !host_handler(current)) continue;
        g_previous[i] = current;
        struct sigaction ours = {};
        ours.sa_sigaction = &on_cancel_signal;
        ours.sa_mask = g_previous[i].sa_mask;  // what the host's handler expects to run with
        // The host's delivery semantics, plus SA_SIGINFO to pass siginfo on. SA_RESETHAND too: after one
        // delivery the kernel resets to the default action, as it would have for the host's own handler (and
        // restore() then leaves that alone, since it is no longer ours).
        ours.sa_flags = SA_SIGINFO | (g_previous[i].sa_flags & (SA_RESTART | SA_ONSTACK | SA_NODEFER | SA_RESETHAND));
        g_installed[i] = ::sigaction(kSignals[i], &ours, nullptr) == 0;
    }
}

void restore() noexcept {
    for (int i = 0; i < kCount; ++i) {
        if (!g_installed[i]) continue;
        g_installed[i] = false;
        struct sigaction current = {};
        if (::sigaction(kSignals[i], nullptr, &current) == 0 && is_ours(current))
            (void)::sigaction(kSignals[i], &g_previous[i], nullptr);
    }
}

}  // namespace

SignalCancel::SignalCancel() noexcept {
    try {
        const std::lock_guard lock(g_mutex);
        if (g_users++ == 0) install();
        registered_ = true;
    } catch (...) {
        // std::mutex::lock failing (system_error): no cancellation, the timeouts still bound the wait.
    }
}

SignalCancel::~SignalCancel() {
    if (!registered_) return;
    try {
        const std::lock_guard lock(g_mutex);
        if (--g_users == 0) restore();
    } catch (...) {
    }
}

std::shared_ptr<std::atomic<bool>> SignalCancel::flag() const noexcept {
    // Aliasing constructor with no owner: a non-null pointer to the static flag, no control block, no allocation.
    return std::shared_ptr<std::atomic<bool>>(std::shared_ptr<void>(), &g_cancelled);
}

int SignalCancel::signal() const noexcept { return g_cancelled.load() ? g_signal.load() : 0; }

}  // namespace luksforge::token
