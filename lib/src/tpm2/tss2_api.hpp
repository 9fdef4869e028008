// Internal: tpm2-tss's entry points (ESYS, marshalling, the TCTI loader, response codes), loaded on first use
// (util/dynamic_library.hpp says why). Only the tpm2 pin needs them, so commands and hosts that never touch a
// TPM never load tpm2-tss. The members keep the library's own names, so calls read like the tpm2-tss manuals.
#pragma once

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

namespace luksforge::detail {

// X(library, symbol) for every tpm2-tss function luksforge calls; `library` names the one that has it.
#define LUKSFORGE_TSS2_ENTRY_POINTS(X)                                                                  \
    X(esys, Esys_Create)                                                                                \
    X(esys, Esys_CreatePrimary)                                                                         \
    X(esys, Esys_Finalize)                                                                              \
    X(esys, Esys_FlushContext)                                                                          \
    X(esys, Esys_Free)                                                                                  \
    X(esys, Esys_Initialize)                                                                            \
    X(esys, Esys_Load)                                                                                  \
    X(esys, Esys_PCR_Read)                                                                              \
    X(esys, Esys_PolicyGetDigest)                                                                       \
    X(esys, Esys_PolicyPCR)                                                                             \
    X(esys, Esys_StartAuthSession)                                                                      \
    X(esys, Esys_TRSess_SetAttributes)                                                                  \
    X(esys, Esys_Unseal)                                                                                \
    X(mu, Tss2_MU_TPM2B_PRIVATE_Marshal)                                                                \
    X(mu, Tss2_MU_TPM2B_PRIVATE_Unmarshal)                                                              \
    X(mu, Tss2_MU_TPM2B_PUBLIC_Marshal)                                                                 \
    X(mu, Tss2_MU_TPM2B_PUBLIC_Unmarshal)                                                               \
    X(tctildr, Tss2_TctiLdr_Initialize)                                                                 \
    X(tctildr, Tss2_TctiLdr_Finalize)                                                                   \
    X(rc, Tss2_RC_Decode)

struct Tss2Api {
#define LUKSFORGE_DECLARE_ENTRY(library, symbol) decltype(&::symbol) symbol;
    LUKSFORGE_TSS2_ENTRY_POINTS(LUKSFORGE_DECLARE_ENTRY)
#undef LUKSFORGE_DECLARE_ENTRY
};

// The table, loading libtss2-esys, -mu, -tctildr and -rc (.so.0) on the first call (thread-safe); throws
// luksforge::Error (ELIBACC) when one cannot be loaded, and tries again on the next call.
const Tss2Api& tss2();

}  // namespace luksforge::detail
