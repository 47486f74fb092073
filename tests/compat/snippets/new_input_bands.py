import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
bandset = catalog.create_bandset(["$DATA/s2", "S2_"], wavelengths=["Sentinel-2"], bandset_number=1)
output = rs.band_calc(
    input_bands=bandset,
    output_path="$DATA/out/new_input_bands/ndvi.tif",
    expression_string='("b4" - "b3") / ("b4" + "b3")',
)
print(output.check)
print(output.paths)
rs.close()
