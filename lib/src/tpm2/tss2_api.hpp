// Internal: tpm2-tss's entry points (ESYS, marshalling, the TCTI loader, response codes), loaded on first use
// (util/dynamic_library.hpp says why). Only the tpm2 pin needs them, so commands and hosts that never touch a
// TPM never load tpm2-tss. The members keep the library's own names, so calls read like the tpm2-tss manuals.
#pragma once

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

namespace luksforge::detail {

struct Tss2Api {
    decltype(&::Esys_Create) Esys_Create;
    decltype(&::Esys_CreatePrimary) Esys_CreatePrimary;
    decltype(&::Esys_Finalize) Esys_Finalize;
    decltype(&::Esys_FlushContext) Esys_FlushContext;
    decltype(&::Esys_Free) Esys_Free;
    decltype(&::Esys_Initialize) Esys_Initialize;
    decltype(&::Esys_Load) Esys_Load;
    decltype(&::Esys_PCR_Read) Esys_PCR_Read;
    decltype(&::Esys_PolicyGetDigest) Esys_PolicyGetDigest;
    decltype(&::Esys_PolicyPCR) Esys_PolicyPCR;
    decltype(&::Esys_StartAuthSession) Esys_StartAuthSession;
    decltype(&::Esys_TRSess_SetAttributes) Esys_TRSess_SetAttributes;
    decltype(&::Esys_Unseal) Esys_Unseal;
    decltype(&::Tss2_MU_TPM2B_PRIVATE_Marshal) Tss2_MU_TPM2B_PRIVATE_Marshal;
    decltype(&::Tss2_MU_TPM2B_PRIVATE_Unmarshal) Tss2_MU_TPM2B_PRIVATE_Unmarshal;
    decltype(&::Tss2_MU_TPM2B_PUBLIC_Marshal) Tss2_MU_TPM2B_PUBLIC_Marshal;
    decltype(&::Tss2_MU_TPM2B_PUBLIC_Unmarshal) Tss2_MU_TPM2B_PUBLIC_Unmarshal;
    decltype(&::Tss2_TctiLdr_Initialize) Tss2_TctiLdr_Initialize;
    decltype(&::Tss2_TctiLdr_Finalize) Tss2_TctiLdr_Finalize;
    decltype(&::Tss2_RC_Decode) Tss2_RC_Decode;
};

// The table, loading libtss2-esys, -mu, -tctildr and -rc (.so.0) on the first call (thread-safe); throws
// luksforge::Error (ELIBACC) when one cannot be loaded, and tries again on the next call.
const Tss2Api& tss2();

}  // namespace luksforge::detail
