// tpm2-tss plumbing for the tpm2 pin: TCTI selection as Clevis does it, the ESYS context's lifetime, and
// TSS2 return codes as luksforge errors.
#include "tpm2/esys.hpp"

#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace luksforge::detail::tpm2 {

std::string clevis_tcti_config() {
    // clevis-encrypt-tpm2 / clevis-decrypt-tpm2: `if [ -z "$TPM2TOOLS_TCTI" ]` then device:/dev/tpmrm? (the
    // first that exists), which must be readable and writable. TPM2TOOLS_TCTI_NAME and TCTI are overwritten
    // or never reached by the scripts, so they are not honoured here either.
    if (const char* tcti = std::getenv("TPM2TOOLS_TCTI"); tcti != nullptr && *tcti != '\0') return tcti;
    for (char n = '0'; n <= '9'; ++n) {
        const std::string device = std::string("/dev/tpmrm") + n;
        if (::access(device.c_str(), F_OK) != 0) continue;
        if (::access(device.c_str(), R_OK | W_OK) != 0)
            throw TpmError("the TPM2 device " + device + " must be readable and writable", EACCES);
        return "device:" + device;
    }
    throw TpmError("no TPM2: no /dev/tpmrm* device (the kernel's TPM resource manager, which Clevis needs too) "
                   "and TPM2TOOLS_TCTI is not set");
}

std::mutex& tpm_mutex() {
    static std::mutex mutex;
    return mutex;
}

TSS2_RC tpm_error_number(TSS2_RC rc) {
    // Format-one codes carry a handle/session/parameter number in bits 6-11, masked off here.
    if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return 0;
    return (rc & TPM2_RC_FMT1) != 0 ? (rc & (TPM2_RC_FMT1 | 0x3f)) : (rc & 0x97f);
}

namespace {

bool unreachable(TSS2_RC rc) {
    const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
    const TSS2_RC base = rc & ~TSS2_RC_LAYER_MASK;
    if (layer == TSS2_TCTI_RC_LAYER) return true;
    return base == TSS2_BASE_RC_IO_ERROR || base == TSS2_BASE_RC_NO_CONNECTION || base == TSS2_BASE_RC_TRY_AGAIN ||
           base == TSS2_BASE_RC_NOT_IMPLEMENTED;
}

}  // namespace

void throw_tss(TSS2_RC rc, std::string_view what) {
    // Tss2_RC_Decode returns a static buffer: callers hold tpm_mutex().
    const std::string text = std::string(what) + ": " + tss2().Tss2_RC_Decode(rc);
    const TSS2_RC number = tpm_error_number(rc);
    if (number == TPM2_RC_POLICY_FAIL || number == TPM2_RC_PCR_CHANGED || number == TPM2_RC_PCR)
        throw PcrMismatchError(std::string(what) +
                               ": the TPM's PCR policy does not hold — a PCR this binding is sealed to has changed "
                               "since it was made (" + tss2().Tss2_RC_Decode(rc) + ")");
    if (number == TPM2_RC_OBJECT_MEMORY || number == TPM2_RC_SESSION_MEMORY)
        throw TpmError(text + " (the TPM's transient slots are full: without a resource manager another program "
                              "left objects loaded; `tpm2_flushcontext -t` frees them)", EBUSY);
    if (unreachable(rc)) throw TpmError(text + " (the TPM cannot be reached)", EIO);
    throw TpmError(text, EIO);
}

Esys::Esys(const std::string& tcti_config) {
    const TSS2_RC loaded = tss2().Tss2_TctiLdr_Initialize(tcti_config.c_str(), &tcti_);
    if (loaded != TSS2_RC_SUCCESS)
        throw TpmError("cannot open the TPM2 TCTI \"" + tcti_config + "\": " + tss2().Tss2_RC_Decode(loaded));
    const TSS2_RC rc = tss2().Esys_Initialize(&context_, tcti_, nullptr);
    if (rc != TSS2_RC_SUCCESS) {
        release();
        throw TpmError("cannot start an ESYS context over \"" + tcti_config + "\": " + tss2().Tss2_RC_Decode(rc), EIO);
    }
}

Esys::Esys(Esys&& other) noexcept
    : tcti_(std::exchange(other.tcti_, nullptr)), context_(std::exchange(other.context_, nullptr)) {}

Esys& Esys::operator=(Esys&& other) noexcept {
    if (this != &other) {
        release();
        tcti_ = std::exchange(other.tcti_, nullptr);
        context_ = std::exchange(other.context_, nullptr);
    }
    return *this;
}

Esys::~Esys() noexcept { release(); }

void Esys::release() noexcept {
    if (context_ != nullptr) tss2().Esys_Finalize(&context_);
    if (tcti_ != nullptr) tss2().Tss2_TctiLdr_Finalize(&tcti_);
    context_ = nullptr;
    tcti_ = nullptr;
}

}  // namespace luksforge::detail::tpm2
