# Run by the agent after an update (firmware or this bundle), with the new code running: the
# update is kept only if the sensor samples. -> None when good, else why not.
import asyncio


async def run(ctx):
    import sensor

    for _ in range(30):  # up to 3 s for 10 samples
        s = sensor.sensor
        if s is not None and s.samples >= 10:
            return None
        await asyncio.sleep_ms(100)
    return "the sensor is not sampling"
