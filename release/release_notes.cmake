# Run by `cmake --install` / `cpack` after everything else is installed (release/CMakeLists.txt sets package_name,
# cpu_level, cuda_major, minimum_driver, cuda_architectures, objdump): writes RELEASE.txt, what the archive holds and what a
# machine needs to run it, measured on the installed tree. The build is described by the installed dsmil itself
# (`--version`), which also checks that it starts from the tree as installed.
set(prefix "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}")

function(mib bytes out)
  math(EXPR tenths "(${bytes} * 10 + 524288) / 1048576")
  math(EXPR whole "${tenths} / 10")
  math(EXPR fraction "${tenths} % 10")
  set(${out} "${whole}.${fraction} MiB" PARENT_SCOPE)
endfunction()

# Regular files only: the symlinks of lib/ add no bytes.
function(bytes_under dir out)
  file(GLOB_RECURSE files LIST_DIRECTORIES false "${dir}/*")
  set(total 0)
  foreach(file IN LISTS files)
    if(NOT IS_SYMLINK "${file}")
      file(SIZE "${file}" size)
      math(EXPR total "${total} + ${size}")
    endif()
  endforeach()
  set(${out} ${total} PARENT_SCOPE)
endfunction()

# Without LD_LIBRARY_PATH, as on the machine the archive is for: what --version reports loaded then comes from lib/.
unset(ENV{LD_LIBRARY_PATH})
execute_process(COMMAND "${prefix}/bin/dsmil" --version RESULT_VARIABLE failed OUTPUT_VARIABLE version_text
                ERROR_VARIABLE version_error)
if(failed)
  message(FATAL_ERROR "release: the installed dsmil does not start (${failed}): ${version_error}")
endif()
# The lines up to the CUDA backend describe the build; the rest, the libraries and device of this machine.
string(REGEX MATCH "^.*\nCUDA backend:[^\n]*" build_text "${version_text}")

# The newest glibc and libstdc++ symbol versions any installed file asks for are the oldest ones it runs with.
file(GLOB_RECURSE elf_files LIST_DIRECTORIES false "${prefix}/bin/*" "${prefix}/lib/*")
set(glibc 0)
set(glibcxx 0)
foreach(file IN LISTS elf_files)
  if(IS_SYMLINK "${file}")
    continue()
  endif()
  execute_process(COMMAND "${objdump}" -T "${file}" OUTPUT_VARIABLE symbols ERROR_QUIET)
  foreach(library glibc glibcxx)
    string(TOUPPER "${library}_" tag)
    string(REGEX MATCHALL "${tag}[0-9.]+" versions "${symbols}")
    foreach(version IN LISTS versions)
      string(REPLACE "${tag}" "" version "${version}")
      if(version VERSION_GREATER ${library})
        set(${library} ${version})
      endif()
    endforeach()
  endforeach()
endforeach()

set(needs "  - Linux on an x86-64 CPU with the instructions of -march=${cpu_level}, glibc ${glibc} or newer and a
    libstdc++ with GLIBCXX_${glibcxx}\n")
if(cuda_major)
  if(NOT minimum_driver)
    message(FATAL_ERROR "release: no minimum NVIDIA driver known for CUDA ${cuda_major}; add it in release/CMakeLists.txt")
  endif()
  string(APPEND needs "  - an NVIDIA driver ${minimum_driver} or newer (the minimum for CUDA ${cuda_major}.x); the GPU code is
    machine code for sm_${cuda_architectures} and PTX that the driver compiles for newer GPUs\n")
endif()

bytes_under("${prefix}" total)
file(SIZE "${prefix}/bin/dsmil" binary)
bytes_under("${prefix}/lib" libraries)
mib(${total} total_text)
mib(${binary} binary_text)
mib(${libraries} libraries_text)
set(library_lines "")
file(GLOB library_files LIST_DIRECTORIES false "${prefix}/lib/*")
list(SORT library_files)
foreach(file IN LISTS library_files)
  if(NOT IS_SYMLINK "${file}")
    file(SIZE "${file}" size)
    mib(${size} size_text)
    get_filename_component(name "${file}" NAME)
    string(APPEND library_lines "  lib/${name}  ${size_text}\n")
  endif()
endforeach()
string(REPLACE "\n" "\n  " build_lines "${build_text}")

file(WRITE "${prefix}/RELEASE.txt" "${package_name}: the dsmil3d release archive

Build (bin/dsmil --version):
  ${build_lines}

Needs:
${needs}Nothing else: every other library bin/dsmil loads is in lib/, which it finds through its RPATH
($ORIGIN/../lib) with LD_LIBRARY_PATH unset, from any working directory.

Size unpacked, without this file: ${total_text}; bin/dsmil ${binary_text}, lib/ ${libraries_text}:
${library_lines}
Configs: share/dsmil/configs/ (`bin/dsmil cv --config tiny` finds them from any folder). README.md is the
project's README. `bin/dsmil --version` prints this build and the CUDA libraries and GPU it finds.
")
