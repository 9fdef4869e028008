// LD_PRELOAD library for the crash harness: numbers every point where luksforge or libcryptsetup changes an
// image and, when asked, kills the process with SIGKILL at one of them.
//
//   LUKSFORGE_HOOK_LOG=FILE   append one line per event ("crypt_keyslot_destroy", "write", "fsync", ...)
//   LUKSFORGE_HOOK_KILL=N     SIGKILL at event N (1-based): before a crypt_* call runs, after a write()/fsync()
//                             returned (the bytes are in the file, nothing after them is)
//   LUKSFORGE_HOOK_STALL=N    sleep LUKSFORGE_HOOK_STALL_MS (default 1000) at event N (to line up races)
//   LUKSFORGE_HOOK_TORN=1     with HOOK_KILL on a write(): write only the first half of the buffer, then die
//
// crypt_* calls made inside libcryptsetup (e.g. its re-encryption teardown destroying keyslots) go through its
// PLT and are seen too. Only writes to regular files and block devices count (not the terminal or pipes).
#include <dlfcn.h>
#include <sys/types.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct crypt_device;

namespace {

long counter;

using write_fn = ssize_t (*)(int, const void*, size_t);

write_fn real_write_fn() {
    static write_fn real = reinterpret_cast<write_fn>(dlsym(RTLD_NEXT, "write"));
    return real;
}

void event(const char* name, int before_torn_write, int fd, const void* buf, size_t len) {
    const long n = __atomic_add_fetch(&counter, 1, __ATOMIC_SEQ_CST);
    const char* log = getenv("LUKSFORGE_HOOK_LOG");
    if (log != NULL && *log != '\0') {
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (out >= 0) {
            char line[96];
            int k = snprintf(line, sizeof line, "%ld %s\n", n, name);
            if (k > 0) {
                real_write_fn()(out, line, static_cast<size_t>(k));
            }
            close(out);
        }
    }
    const char* stall_at = getenv("LUKSFORGE_HOOK_STALL");
    if (stall_at != NULL && atol(stall_at) == n) {
        const char* ms = getenv("LUKSFORGE_HOOK_STALL_MS");
        usleep(static_cast<useconds_t>((ms != NULL ? atol(ms) : 1000) * 1000));
    }
    const char* kill_at = getenv("LUKSFORGE_HOOK_KILL");
    if (kill_at == NULL || atol(kill_at) != n) return;
    if (before_torn_write) {
        const char* torn = getenv("LUKSFORGE_HOOK_TORN");
        if (torn != NULL && strcmp(torn, "1") == 0 && len > 1) {
            real_write_fn()(fd, buf, len / 2);
            fsync(fd);
        } else {
            return;  // killed after the real write, below
        }
    }
    kill(getpid(), SIGKILL);
    for (;;) pause();
}

int counts(int fd) {
    struct stat st;
    if (fd <= 2 || fstat(fd, &st) != 0) return 0;
    return S_ISREG(st.st_mode) || S_ISBLK(st.st_mode);
}

int torn_pending(void) {
    const char* torn = getenv("LUKSFORGE_HOOK_TORN");
    return torn != NULL && strcmp(torn, "1") == 0;
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buf, size_t len) {
    static ssize_t (*real)(int, const void*, size_t);
    if (real == NULL) real = real_write_fn();
    if (!counts(fd)) return real(fd, buf, len);
    if (torn_pending()) {
        event("write", 1, fd, buf, len);
        return real(fd, buf, len);
    }
    ssize_t r = real(fd, buf, len);
    event("write", 0, fd, buf, len);
    return r;
}

ssize_t pwrite64(int fd, const void* buf, size_t len, off_t offset) {
    static ssize_t (*real)(int, const void*, size_t, off_t);
    if (real == NULL) real = reinterpret_cast<ssize_t (*)(int, const void*, size_t, off_t)>(dlsym(RTLD_NEXT, "pwrite64"));
    ssize_t r = real(fd, buf, len, offset);
    if (counts(fd)) event("pwrite", 0, fd, buf, len);
    return r;
}

ssize_t pwrite(int fd, const void* buf, size_t len, off_t offset) { return pwrite64(fd, buf, len, offset); }

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = reinterpret_cast<int (*)(int)>(dlsym(RTLD_NEXT, "fsync"));
    int r = real(fd);
    if (counts(fd)) event("fsync", 0, fd, NULL, 0);
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = reinterpret_cast<int (*)(int)>(dlsym(RTLD_NEXT, "fdatasync"));
    int r = real(fd);
    if (counts(fd)) event("fdatasync", 0, fd, NULL, 0);
    return r;
}

// libcryptsetup's own write points: die before the call changes anything.
#define HOOK(ret, name, params, args)                                        \
    ret name params {                                                        \
        static ret(*real) params;                                            \
        if (real == NULL) real = reinterpret_cast<ret(*) params>(dlsym(RTLD_NEXT, #name));     \
        event(#name, 0, -1, NULL, 0);                                        \
        return real args;                                                    \
    }

HOOK(int, crypt_keyslot_destroy, (struct crypt_device * cd, int keyslot), (cd, keyslot))
HOOK(int, crypt_token_json_set, (struct crypt_device * cd, int token, const char* json), (cd, token, json))
HOOK(int, crypt_token_assign_keyslot, (struct crypt_device * cd, int token, int keyslot), (cd, token, keyslot))
HOOK(int, crypt_token_unassign_keyslot, (struct crypt_device * cd, int token, int keyslot), (cd, token, keyslot))
HOOK(int, crypt_keyslot_add_by_key,
     (struct crypt_device * cd, int keyslot, const char* vk, size_t vk_size, const char* pass, size_t pass_size,
      uint32_t flags),
     (cd, keyslot, vk, vk_size, pass, pass_size, flags))
HOOK(int, crypt_keyslot_add_by_volume_key,
     (struct crypt_device * cd, int keyslot, const char* vk, size_t vk_size, const char* pass, size_t pass_size),
     (cd, keyslot, vk, vk_size, pass, pass_size))
HOOK(int, crypt_format,
     (struct crypt_device * cd, const char* type, const char* cipher, const char* mode, const char* uuid,
      const char* vk, size_t vk_size, void* params),
     (cd, type, cipher, mode, uuid, vk, vk_size, params))
HOOK(int, crypt_reencrypt_run, (struct crypt_device * cd, int (*progress)(uint64_t, uint64_t, void*), void* usrptr),
     (cd, progress, usrptr))
HOOK(int, crypt_persistent_flags_set, (struct crypt_device * cd, int type, uint32_t flags), (cd, type, flags))

}  // extern "C"
