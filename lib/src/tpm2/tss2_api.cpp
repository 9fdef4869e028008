// tpm2-tss loaded on first use: see tss2_api.hpp.
#include "tpm2/tss2_api.hpp"

#include "util/dynamic_library.hpp"

namespace luksforge::detail {

namespace {

// tpm2-tss's libraries have kept ABI .so.0 since 2.0 (2018): RHEL 8's 2.3, Debian 12's 3.2 and later.
Tss2Api load_tss2() {
    static const DynamicLibrary esys("libtss2-esys.so.0", "the tpm2 pin (tpm2-tss ESYS)");
    static const DynamicLibrary mu("libtss2-mu.so.0", "the tpm2 pin (tpm2-tss marshalling)");
    static const DynamicLibrary tctildr("libtss2-tctildr.so.0", "the tpm2 pin (tpm2-tss TCTI loader)");
    static const DynamicLibrary rc("libtss2-rc.so.0", "the tpm2 pin (tpm2-tss response codes)");
    Tss2Api api{};
    esys.bind(api.Esys_Create, "Esys_Create");
    esys.bind(api.Esys_CreatePrimary, "Esys_CreatePrimary");
    esys.bind(api.Esys_Finalize, "Esys_Finalize");
    esys.bind(api.Esys_FlushContext, "Esys_FlushContext");
    esys.bind(api.Esys_Free, "Esys_Free");
    esys.bind(api.Esys_Initialize, "Esys_Initialize");
    esys.bind(api.Esys_Load, "Esys_Load");
    esys.bind(api.Esys_PCR_Read, "Esys_PCR_Read");
    esys.bind(api.Esys_PolicyGetDigest, "Esys_PolicyGetDigest");
    esys.bind(api.Esys_PolicyPCR, "Esys_PolicyPCR");
    esys.bind(api.Esys_StartAuthSession, "Esys_StartAuthSession");
    esys.bind(api.Esys_TRSess_SetAttributes, "Esys_TRSess_SetAttributes");
    esys.bind(api.Esys_Unseal, "Esys_Unseal");
    mu.bind(api.Tss2_MU_TPM2B_PRIVATE_Marshal, "Tss2_MU_TPM2B_PRIVATE_Marshal");
    mu.bind(api.Tss2_MU_TPM2B_PRIVATE_Unmarshal, "Tss2_MU_TPM2B_PRIVATE_Unmarshal");
    mu.bind(api.Tss2_MU_TPM2B_PUBLIC_Marshal, "Tss2_MU_TPM2B_PUBLIC_Marshal");
    mu.bind(api.Tss2_MU_TPM2B_PUBLIC_Unmarshal, "Tss2_MU_TPM2B_PUBLIC_Unmarshal");
    tctildr.bind(api.Tss2_TctiLdr_Initialize, "Tss2_TctiLdr_Initialize");
    tctildr.bind(api.Tss2_TctiLdr_Finalize, "Tss2_TctiLdr_Finalize");
    rc.bind(api.Tss2_RC_Decode, "Tss2_RC_Decode");
    return api;
}

}  // namespace

const Tss2Api& tss2() {
    static const Tss2Api api = load_tss2();
    return api;
}

}  // namespace luksforge::detail
