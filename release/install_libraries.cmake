# Run by `cmake --install` / `cpack` (release/CMakeLists.txt sets dsmil_executable, loaded_by_name, library_dirs):
# copies into lib/ the shared libraries dsmil and the libraries in loaded_by_name need, found as the dynamic
# loader finds them here, each with its chain of symlinks (libfmt.so.9 -> libfmt.so.9.1.0).
#
# Left out (RELEASE.txt states the versions the target machine must have): glibc's libraries, which come with its
# dynamic loader; the C++ runtime (libstdc++, libgcc_s), which every Linux has, and which taken from Debian 12 would
# raise the glibc needed from 2.34 to 2.36 (its libstdc++ calls arc4random), shutting out Ubuntu 22.04 (glibc 2.35,
# whose libstdc++ is new enough); the NVIDIA driver's libraries, which belong with its kernel module.
set(prefix "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}")
foreach(library IN LISTS loaded_by_name)
  if(NOT EXISTS "${library}")
    message(FATAL_ERROR "release: ${library} is not there, and dsmil opens it at run time")
  endif()
endforeach()
file(GET_RUNTIME_DEPENDENCIES
     EXECUTABLES "${dsmil_executable}"
     LIBRARIES ${loaded_by_name}
     DIRECTORIES ${library_dirs}
     PRE_EXCLUDE_REGEXES "^ld-linux" "^libc\\.so" "^libm\\.so" "^libmvec\\.so" "^libdl\\.so" "^librt\\.so"
                         "^libpthread\\.so" "^libresolv\\.so" "^libutil\\.so" "^libstdc\\+\\+\\.so" "^libgcc_s\\.so"
                         "^libcuda\\.so" "^libnvidia-"
     RESOLVED_DEPENDENCIES_VAR libraries
     UNRESOLVED_DEPENDENCIES_VAR missing)
if(missing)
  message(FATAL_ERROR "release: dsmil needs ${missing}, which is not found here")
endif()
file(INSTALL ${libraries} ${loaded_by_name} DESTINATION "${prefix}/lib" FOLLOW_SYMLINK_CHAIN)
