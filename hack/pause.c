/*
 * The pod sandbox process of the real node's pause image (hack/images.sh builds it with
 * gcc -static, so the image needs no libc). It holds the pod's namespaces open, reaps the
 * zombies it inherits as PID 1 of a shared PID namespace, and exits on SIGINT/SIGTERM: PID 1
 * ignores signals it has no handler for, so without the handlers a sandbox could only be
 * stopped with SIGKILL.
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {0}, child = {0};
    stop.sa_handler = on_stop;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGINT, &stop, 0) || sigaction(SIGTERM, &stop, 0) ||
        sigaction(SIGCHLD, &child, 0)) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
