// Test fixture: a real software TPM 2.0 (swtpm socket --tpm2) on a free 127.0.0.1 port pair, with a fresh state
// directory, started in the constructor and stopped (and its state removed) in the destructor. While one lives,
// TPM2TOOLS_TCTI points at it in this process, so the library, stock Clevis and tpm2-tools children all use it.
#pragma once

#include "testutil.hpp"

#include <sys/types.h>

#include <optional>
#include <string>

namespace luksforge::test {

class SoftwareTpm {
public:
    SoftwareTpm();
    ~SoftwareTpm();
    SoftwareTpm(const SoftwareTpm&) = delete;
    SoftwareTpm& operator=(const SoftwareTpm&) = delete;

    // "swtpm:host=127.0.0.1,port=P" (the TCTI uses P+1 for swtpm's control channel).
    std::string tcti() const;
    int port() const noexcept { return port_; }

    // tpm2_pcrextend PCR:BANK=<digest of `data`>: the PCR changes as a boot measurement would change it.
    void extend_pcr(unsigned pcr, const std::string& bank = "sha256", const std::string& data = "luksforge test");
    // tpm2_pcrreset (PCR 16 and 23 are resettable from locality 0).
    void reset_pcr(unsigned pcr);
    // The PCR's current value in `bank`, as raw bytes (tpm2_pcrread -o).
    std::string read_pcr(unsigned pcr, const std::string& bank = "sha256");

    void stop();  // the TPM goes away (TPM2TOOLS_TCTI still names it): tests of an unreachable TPM
    // Stop and start again on the same state and ports: a TPM reset (PCRs back to zero; a tpm2_pcrallocate
    // takes effect).
    void restart();

private:
    void start();
    TempDir dir_;
    int port_ = 0;
    pid_t pid_ = -1;
    std::optional<std::string> saved_tcti_;
};

}  // namespace luksforge::test
