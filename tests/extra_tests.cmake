# Tests beyond the per-layer doctest programs: build configurations and packaging.

find_package(Python3 COMPONENTS Interpreter)

# The library compiles and works without exceptions and RTTI.
add_executable(noexcept_check ${CMAKE_CURRENT_SOURCE_DIR}/noexcept_check.cpp)
target_link_libraries(noexcept_check PRIVATE tinyslm::tinyslm tinyslm_dev_flags)
target_compile_options(noexcept_check PRIVATE -fno-exceptions -fno-rtti)
add_test(NAME noexcept_build COMMAND noexcept_check)

# The checked-in single header matches include/.
if(Python3_Interpreter_FOUND)
  add_test(NAME single_header_fresh
           COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/amalgamate.py --check)
endif()

# A consumer that includes only single_include/tinyslm.hpp, with each compiler on the machine.
set(TINYSLM_CONSUMER_DIR ${CMAKE_CURRENT_SOURCE_DIR}/consumer)
set(TINYSLM_CONSUMER_WORK ${PROJECT_BINARY_DIR}/consumer-work)
foreach(cxx g++ clang++)
  find_program(TINYSLM_${cxx}_PATH NAMES ${cxx})
  if(TINYSLM_${cxx}_PATH)
    add_test(NAME consumer_single_header_${cxx}
             COMMAND sh -c "mkdir -p '${TINYSLM_CONSUMER_WORK}' && '${TINYSLM_${cxx}_PATH}' -std=c++20 -O1 -Wall -Wextra -pthread -I'${PROJECT_SOURCE_DIR}/single_include' '${TINYSLM_CONSUMER_DIR}/main.cpp' -o '${TINYSLM_CONSUMER_WORK}/single_${cxx}' && '${TINYSLM_CONSUMER_WORK}/single_${cxx}'")
  endif()
endforeach()

# add_subdirectory, and find_package after `cmake --install`.
add_test(NAME consumer_add_subdirectory
         COMMAND sh -c "rm -rf '${TINYSLM_CONSUMER_WORK}/sub' && ${CMAKE_COMMAND} -S '${TINYSLM_CONSUMER_DIR}' -B '${TINYSLM_CONSUMER_WORK}/sub' -DTINYSLM_CONSUMER_MODE=subdirectory -DTINYSLM_SOURCE_DIR='${PROJECT_SOURCE_DIR}' >/dev/null && ${CMAKE_COMMAND} --build '${TINYSLM_CONSUMER_WORK}/sub' >/dev/null && '${TINYSLM_CONSUMER_WORK}/sub/consumer'")
add_test(NAME consumer_find_package
         COMMAND sh -c "rm -rf '${TINYSLM_CONSUMER_WORK}/inst' '${TINYSLM_CONSUMER_WORK}/pkg' '${TINYSLM_CONSUMER_WORK}/lib' && ${CMAKE_COMMAND} -S '${PROJECT_SOURCE_DIR}' -B '${TINYSLM_CONSUMER_WORK}/lib' -DTINYSLM_BUILD_TESTS=OFF -DTINYSLM_BUILD_EXAMPLES=OFF -DTINYSLM_BUILD_C_API=OFF -DTINYSLM_INSTALL=ON >/dev/null && ${CMAKE_COMMAND} --install '${TINYSLM_CONSUMER_WORK}/lib' --prefix '${TINYSLM_CONSUMER_WORK}/inst' >/dev/null && ${CMAKE_COMMAND} -S '${TINYSLM_CONSUMER_DIR}' -B '${TINYSLM_CONSUMER_WORK}/pkg' -DCMAKE_PREFIX_PATH='${TINYSLM_CONSUMER_WORK}/inst' >/dev/null && ${CMAKE_COMMAND} --build '${TINYSLM_CONSUMER_WORK}/pkg' >/dev/null && '${TINYSLM_CONSUMER_WORK}/pkg/consumer'")
set_tests_properties(consumer_add_subdirectory consumer_find_package PROPERTIES RUN_SERIAL TRUE)

# The inspect program: right architecture for a real model, one-line error for a v1 file.
if(TARGET inspect)
  if(EXISTS ${TINYSLM_SHARED_DIR}/models/stories260K.gguf)
    add_test(NAME inspect_real_model COMMAND inspect ${TINYSLM_SHARED_DIR}/models/stories260K.gguf)
    set_tests_properties(inspect_real_model PROPERTIES
      PASS_REGULAR_EXPRESSION "architecture: llama\n  name: llama\n  tensors: 48\n")
  endif()
  if(EXISTS ${TINYSLM_SHARED_DIR}/models/legacy/tinyllamas-stories-260k-f32.gguf)
    add_test(NAME inspect_rejects_v1
             COMMAND sh -c "'$<TARGET_FILE:inspect>' '${TINYSLM_SHARED_DIR}/models/legacy/tinyllamas-stories-260k-f32.gguf' 2>&1 >/dev/null; test $? -eq 1")
    add_test(NAME inspect_v1_message
             COMMAND sh -c "'$<TARGET_FILE:inspect>' '${TINYSLM_SHARED_DIR}/models/legacy/tinyllamas-stories-260k-f32.gguf' 2>&1")
    set_tests_properties(inspect_v1_message PROPERTIES
      PASS_REGULAR_EXPRESSION "^inspect: [^\n]*unsupported GGUF version 1[^\n]*\n$")
  endif()
endif()

# meson: tinyslm as a subproject of the consumer app.
find_program(TINYSLM_MESON meson)
if(TINYSLM_MESON)
  add_test(NAME consumer_meson_subproject
           COMMAND sh -c "rm -rf '${TINYSLM_CONSUMER_WORK}/meson' && mkdir -p '${TINYSLM_CONSUMER_WORK}/meson/src/subprojects' && cp '${TINYSLM_CONSUMER_DIR}/main.cpp' '${TINYSLM_CONSUMER_DIR}/meson.build' '${TINYSLM_CONSUMER_WORK}/meson/src/' && ln -s '${PROJECT_SOURCE_DIR}' '${TINYSLM_CONSUMER_WORK}/meson/src/subprojects/tinyslm' && '${TINYSLM_MESON}' setup '${TINYSLM_CONSUMER_WORK}/meson/build' '${TINYSLM_CONSUMER_WORK}/meson/src' >/dev/null && '${TINYSLM_MESON}' compile -C '${TINYSLM_CONSUMER_WORK}/meson/build' >/dev/null && '${TINYSLM_CONSUMER_WORK}/meson/build/consumer'")
  set_tests_properties(consumer_meson_subproject PROPERTIES RUN_SERIAL TRUE)
endif()
