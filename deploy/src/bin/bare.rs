//! The bare-metal build run as a bare Linux process under qemu-user
//! (`qemu-arm` for thumbv7em-none-eabihf, `qemu-riscv32` for
//! riscv32imac-unknown-none-elf): the same `no_std` code as the staticlib,
//! with only a `_start` that prints the checked run (scores, training
//! losses, RAM parts) through raw `write`/`exit`
//! system calls. No libc, no linker script (rust-lld's default layout is a
//! valid static ELF). On a host target it is an empty program.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod bare {
    use core::fmt::Write;

    #[cfg(target_arch = "arm")]
    unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> usize {
        let r;
        // SAFETY (caller): a Linux EABI system call; `svc 0` with the number in
        // r7, which is the Thumb frame pointer, so it is saved and restored here.
        unsafe {
            core::arch::asm!(
                "mov {tmp}, r7",
                "mov r7, {n}",
                "svc 0",
                "mov r7, {tmp}",
                n = in(reg) n,
                tmp = out(reg) _,
                inlateout("r0") a => r,
                in("r1") b,
                in("r2") c,
                options(nostack),
            )
        };
        r
    }
    #[cfg(target_arch = "arm")]
    const SYS_WRITE: usize = 4;
    #[cfg(target_arch = "arm")]
    const SYS_EXIT: usize = 1;

    #[cfg(target_arch = "riscv32")]
    unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> usize {
        let r;
        // SAFETY (caller): a Linux RISC-V system call; `ecall` with the number in a7.
        unsafe {
            core::arch::asm!("ecall", in("a7") n, inlateout("a0") a => r, in("a1") b, in("a2") c, options(nostack))
        };
        r
    }
    #[cfg(target_arch = "riscv32")]
    const SYS_WRITE: usize = 64;
    #[cfg(target_arch = "riscv32")]
    const SYS_EXIT: usize = 93;

    struct Stdout;
    impl Write for Stdout {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let mut b = s.as_bytes();
            while !b.is_empty() {
                // SAFETY: `write(1, b, len)` only reads `b`.
                let n = unsafe { syscall3(SYS_WRITE, 1, b.as_ptr() as usize, b.len()) } as isize;
                if n <= 0 {
                    return Err(core::fmt::Error);
                }
                b = &b[n as usize..];
            }
            Ok(())
        }
    }

    fn exit(code: usize) -> ! {
        // SAFETY: `exit` does not return.
        unsafe { syscall3(SYS_EXIT, code, 0, 0) };
        loop {
            core::hint::spin_loop();
        }
    }

    /// The process entry point (the kernel / qemu set up the stack): the
    /// checked run ([`nl_deploy::print_run`]) to stdout.
    #[no_mangle]
    pub extern "C" fn _start() -> ! {
        match nl_deploy::print_run(&mut Stdout, nl_deploy::TRAIN_ON_BARE) {
            Ok(()) => exit(0),
            Err(e) => {
                let _ = writeln!(Stdout, "nl-deploy-bare: {e}");
                exit(3)
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("nl-deploy-bare is for bare-metal targets (run.sh runs it under qemu-arm / qemu-riscv32)");
}
