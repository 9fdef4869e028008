// Cancellation for the handler's Tang requests. The token ABI has no cancel hook (open gets cd, token and the
// caller's usrptr only, up to cryptsetup 2.8), and cryptsetup's own SIGINT/SIGTERM handler only sets a flag
// that the tool looks at after the token loop returns, so without this a Ctrl-C or systemd's SIGTERM would wait
// out a stalled Tang server (up to the 10 s total timeout, per level of sss nesting).
//
// While a SignalCancel lives, SIGINT and SIGTERM whose disposition is a handler of the host's get a handler of
// ours in front of it: it records the signal in a lock-free flag that aborts the transfers (libcurl's progress
// callback reads it, sss children too) and then calls the host's handler exactly as the kernel would have, so
// the host still learns of the signal (cryptsetup's `quit`). A signal left at its default action (terminate) or
// ignored is not touched: the kernel already does the right thing. The last SignalCancel to go restores the
// host's handlers, unless the host replaced ours meanwhile (then its new handler stays). Concurrent opens in one
// process share the flag: a signal is process-wide, so it cancels all of them.
#pragma once

#include <atomic>
#include <memory>

namespace luksforge::token {

class SignalCancel {
public:
    SignalCancel() noexcept;
    ~SignalCancel();
    SignalCancel(const SignalCancel&) = delete;
    SignalCancel& operator=(const SignalCancel&) = delete;

    // The flag for NetworkOptions::cancel (points at static storage; owns nothing).
    std::shared_ptr<std::atomic<bool>> flag() const noexcept;
    // The signal that cancelled (SIGINT or SIGTERM), or 0.
    int signal() const noexcept;

private:
    bool registered_ = false;
};

}  // namespace luksforge::token
