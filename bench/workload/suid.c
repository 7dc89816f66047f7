/* wl-suid: a setuid-root helper left in the cache image, the misconfiguration
 * the benchmark's privilege-change attack exploits. Installed mode 4755, owner
 * root: whoever runs it becomes uid/gid 0 and runs ARGV[1..]. Benchmark only. */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (setgid(0) != 0 || setuid(0) != 0) {
        perror("wl-suid: setuid");
        return 1;
    }
    if (argc < 2) {
        return 0;
    }
    execv(argv[1], argv + 1);
    perror("wl-suid: exec");
    return 127;
}
