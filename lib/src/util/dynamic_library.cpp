// Loading optional libraries on first use: see dynamic_library.hpp for why.
#include "util/dynamic_library.hpp"

#include <luksforge/error.hpp>

#include <dlfcn.h>

#include <cerrno>

namespace luksforge::detail {

namespace {

std::string loader_reason() {
    const char* reason = ::dlerror();
    return reason != nullptr ? reason : "unknown reason";
}

}  // namespace

DynamicLibrary::DynamicLibrary(const char* soname, std::string_view purpose) : soname_(soname), purpose_(purpose) {
    ::dlerror();
    handle_ = ::dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr)
        throw Error(ELIBACC, purpose_ + " needs " + soname_ + ", which cannot be loaded: " + loader_reason());
}

void* DynamicLibrary::symbol(const char* name) const {
    ::dlerror();
    void* entry = ::dlsym(handle_, name);
    if (entry == nullptr)
        throw Error(ELIBACC, purpose_ + ": " + soname_ + " has no " + name + " (older than the build's): " + loader_reason());
    return entry;
}

}  // namespace luksforge::detail
