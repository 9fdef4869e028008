// swtpm for the tests (see swtpm.hpp).
#include "swtpm.hpp"

#include "tang_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace luksforge::test {
namespace {

bool port_free(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
}

std::string hex(const unsigned char* bytes, unsigned length) {
    std::string out;
    char two[3];
    for (unsigned i = 0; i < length; ++i) {
        std::snprintf(two, sizeof two, "%02x", bytes[i]);
        out += two;
    }
    return out;
}

}  // namespace

SoftwareTpm::SoftwareTpm() {
    // The swtpm TCTI talks to the server port P and to the control channel on P+1: both must be free.
    for (int attempt = 0; attempt < 50 && port_ == 0; ++attempt) {
        const int candidate = free_loopback_port();
        if (candidate < 65535 && port_free(candidate + 1)) port_ = candidate;
    }
    if (port_ == 0) throw std::runtime_error("no free loopback port pair for swtpm");
    std::filesystem::create_directory(dir_ / "state");
    if (const char* old = std::getenv("TPM2TOOLS_TCTI")) saved_tcti_ = old;
    ::setenv("TPM2TOOLS_TCTI", tcti().c_str(), 1);
    start();
}

void SoftwareTpm::start() {
    const std::string state = (dir_ / "state").string();
    const std::string server = "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1";
    const std::string ctrl = "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1";
    const std::string log = (dir_ / "swtpm.log").string();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
        ::setpgid(0, 0);
        int null = ::open("/dev/null", O_RDWR);
        int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (null >= 0) ::dup2(null, 0);
        if (out >= 0) {
            ::dup2(out, 1);
            ::dup2(out, 2);
        }
        ::execlp("swtpm", "swtpm", "socket", "--tpm2", "--server", server.c_str(), "--ctrl", ctrl.c_str(),
                 "--tpmstate", ("dir=" + state).c_str(), "--flags", "not-need-init,startup-clear",
                 static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::setpgid(pid_, pid_);
    // Ready when a TPM command goes through (swtpm is a missing package or dead: the test fails here, loudly).
    for (int i = 0; i < 250; ++i) {
        if (run({"tpm2_getrandom", "--hex", "4"}).exit_code == 0) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const std::string output = read_file_bytes(log);
    stop();
    throw std::runtime_error("swtpm on 127.0.0.1:" + std::to_string(port_) + " does not answer: " + output);
}

SoftwareTpm::~SoftwareTpm() {
    stop();
    if (saved_tcti_) ::setenv("TPM2TOOLS_TCTI", saved_tcti_->c_str(), 1);
    else ::unsetenv("TPM2TOOLS_TCTI");
}

std::string SoftwareTpm::tcti() const { return "swtpm:host=127.0.0.1,port=" + std::to_string(port_); }

void SoftwareTpm::stop() { stop_process(pid_); }

void SoftwareTpm::restart() {
    stop();
    // The old listening sockets may linger a moment after swtpm exits.
    for (int i = 0; i < 100 && (!port_free(port_) || !port_free(port_ + 1)); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    start();
}

void SoftwareTpm::extend_pcr(unsigned pcr, const std::string& bank, const std::string& data) {
    const EVP_MD* md = EVP_get_digestbyname(bank.c_str());
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned length = 0;
    if (md == nullptr || EVP_Digest(data.data(), data.size(), digest, &length, md, nullptr) != 1)
        throw std::runtime_error("cannot hash with " + bank);
    run_ok({"tpm2_pcrextend", std::to_string(pcr) + ":" + bank + "=" + hex(digest, length)});
}

void SoftwareTpm::reset_pcr(unsigned pcr) { run_ok({"tpm2_pcrreset", std::to_string(pcr)}); }

std::string SoftwareTpm::read_pcr(unsigned pcr, const std::string& bank) {
    const auto file = dir_ / ("pcr-" + bank + "-" + std::to_string(pcr));
    run_ok({"tpm2_pcrread", "-Q", bank + ":" + std::to_string(pcr), "-o", file.string()});
    return read_file_bytes(file);
}

}  // namespace luksforge::test
