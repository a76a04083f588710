// Runs `edgekeeper doctor` (the probes part's command) with argv, exiting with its code.
import { doctorCommand } from '../../../src/probes/index.js';

process.exitCode = await doctorCommand().run(process.argv.slice(2));
