// Internal: a small RAII layer over tpm2-tss — the TCTI chosen by Clevis's rule, one ESYS_CONTEXT, transient
// objects and sessions flushed on every exit path, ESYS-allocated results freed (sensitive ones wiped), and
// TSS2_RC values turned into luksforge errors. The tpm2 pin (pins/tpm2_pin.cpp) is its only user.
#pragma once

#include <luksforge/error.hpp>

#include "tpm2/tss2_api.hpp"

#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <string>
#include <string_view>

namespace luksforge::detail::tpm2 {

// The TCTI configuration Clevis 19's tpm2 pin uses: TPM2TOOLS_TCTI when set and not empty, else the first
// /dev/tpmrm? (the kernel's resource manager; Clevis never talks to /dev/tpm0 directly). Throws TpmError when
// there is neither, or the device is not readable and writable.
std::string clevis_tcti_config();

// Every TPM conversation in this process holds this lock: without a resource manager (swtpm, mssim) two
// contexts would see each other's transient handles, and sss decrypts its children on several threads.
std::mutex& tpm_mutex();

// The TPM's own response code without its handle/session/parameter number (TPM2_RC_POLICY_FAIL, ...), or 0
// when `rc` comes from another layer (TCTI, ESYS, MU).
TSS2_RC tpm_error_number(TSS2_RC rc);

// Throws PcrMismatchError for a policy that does not hold (TPM2_RC_POLICY_FAIL, PCR, PCR_CHANGED), TpmError
// for the rest (EBUSY when the TPM's transient slots are full, EIO otherwise). Callers hold tpm_mutex().
[[noreturn]] void throw_tss(TSS2_RC rc, std::string_view what);
inline void check_tss(TSS2_RC rc, std::string_view what) {
    if (rc != TSS2_RC_SUCCESS) throw_tss(rc, what);
}

// ESYS output structures, freed with Esys_Free.
template <class T>
struct EsysFree {
    void operator()(T* p) const noexcept { tss2().Esys_Free(p); }
};
template <class T>
using EsysPtr = std::unique_ptr<T, EsysFree<T>>;

// The same for outputs that hold secrets (unsealed data): wiped before they are freed.
template <class T>
struct EsysWipeFree {
    void operator()(T* p) const noexcept {
        if (p != nullptr) explicit_bzero(p, sizeof *p);
        tss2().Esys_Free(p);
    }
};
template <class T>
using EsysSecretPtr = std::unique_ptr<T, EsysWipeFree<T>>;

// A TCTI (Tss2_TctiLdr) and the ESYS context over it. Move-only; the destructor finalizes both.
class Esys {
public:
    // Opens `tcti_config` ("device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321", ...). TpmError when the TCTI
    // cannot be loaded or the TPM does not answer.
    explicit Esys(const std::string& tcti_config);
    Esys(Esys&& other) noexcept;
    Esys& operator=(Esys&& other) noexcept;
    Esys(const Esys&) = delete;
    Esys& operator=(const Esys&) = delete;
    ~Esys() noexcept;

    ESYS_CONTEXT* native_handle() const noexcept { return context_; }

private:
    void release() noexcept;
    TSS2_TCTI_CONTEXT* tcti_ = nullptr;
    ESYS_CONTEXT* context_ = nullptr;
};

// A transient object or session handle, flushed from the TPM when this goes (errors ignored: there is nothing
// left to do with them). Must not outlive its Esys.
class Transient {
public:
    Transient() noexcept = default;
    Transient(ESYS_CONTEXT* context, ESYS_TR handle) noexcept : context_(context), handle_(handle) {}
    Transient(Transient&& other) noexcept
        : context_(std::exchange(other.context_, nullptr)), handle_(std::exchange(other.handle_, ESYS_TR_NONE)) {}
    Transient& operator=(Transient&& other) noexcept {
        if (this != &other) {
            flush();
            context_ = std::exchange(other.context_, nullptr);
            handle_ = std::exchange(other.handle_, ESYS_TR_NONE);
        }
        return *this;
    }
    Transient(const Transient&) = delete;
    Transient& operator=(const Transient&) = delete;
    ~Transient() noexcept { flush(); }

    ESYS_TR native_handle() const noexcept { return handle_; }

private:
    void flush() noexcept {
        if (context_ != nullptr && handle_ != ESYS_TR_NONE) tss2().Esys_FlushContext(context_, handle_);
        context_ = nullptr;
        handle_ = ESYS_TR_NONE;
    }
    ESYS_CONTEXT* context_ = nullptr;
    ESYS_TR handle_ = ESYS_TR_NONE;
};

}  // namespace luksforge::detail::tpm2
