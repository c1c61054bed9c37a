/*
 * The exported dlsym. It asks vgpu_dlsym_decide(handle, name) whether to answer with a hook; otherwise it
 * tail-jumps into glibc's dlsym with the original arguments and the original return address on the stack,
 * so glibc sees the real caller (RTLD_NEXT stays relative to the caller, not to libvgpu).
 */
#if defined(__x86_64__)
    .text
    .globl dlsym
    .type dlsym, @function
dlsym:
    .cfi_startproc
    pushq %rdi
    .cfi_adjust_cfa_offset 8
    pushq %rsi
    .cfi_adjust_cfa_offset 8
    subq $8, %rsp
    .cfi_adjust_cfa_offset 8
    call vgpu_dlsym_decide
    addq $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq %rsi
    .cfi_adjust_cfa_offset -8
    popq %rdi
    .cfi_adjust_cfa_offset -8
    testq %rax, %rax
    jz 1f
    ret
1:
    movq vgpu_real_dlsym_ptr(%rip), %rax
    jmp *%rax
    .cfi_endproc
    .size dlsym, .-dlsym
#endif
    .section .note.GNU-stack,"",@progbits
