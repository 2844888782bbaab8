# The C API, tested from C (tests/c_api_test.c, strict C99) and from Python through ctypes
# (tests/test_c_api.py), both against llama.cpp's golden outputs in ../shared. Both exit 77
# when ../shared is missing, which ctest reports as skipped.
if(NOT TARGET tinyslm_c)
  return()
endif()

include(CheckLanguage)
check_language(C)
if(CMAKE_C_COMPILER)
  enable_language(C)
  add_executable(c_api_test ${CMAKE_CURRENT_SOURCE_DIR}/c_api_test.c)
  target_link_libraries(c_api_test PRIVATE tinyslm_c)
  set_target_properties(c_api_test PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
  if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(c_api_test PRIVATE -Wall -Wextra -pedantic -Werror)
  endif()
  add_test(NAME c_api_c_shared COMMAND ${CMAKE_CROSSCOMPILING_EMULATOR} $<TARGET_FILE:c_api_test> ${TINYSLM_SHARED_DIR})
  set_tests_properties(c_api_c_shared PROPERTIES SKIP_RETURN_CODE 77)
endif()

if(NOT CMAKE_CROSSCOMPILING)
  find_package(Python3 COMPONENTS Interpreter)
  if(Python3_Interpreter_FOUND)
    add_test(NAME c_api_python_shared
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/test_c_api.py
                     $<TARGET_FILE:tinyslm_c> ${TINYSLM_SHARED_DIR})
    set_tests_properties(c_api_python_shared PROPERTIES SKIP_RETURN_CODE 77)
  endif()
endif()
